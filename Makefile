# The two entry points of the README. Everything installs into .venv from requirements.lock.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean-state

demo: $(VENV)/.installed
	$(BIN)/patron demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet -c requirements.lock -e ".[dev]"
	touch $@

clean-state:
	rm -rf .patron mlruns/*
