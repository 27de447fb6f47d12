"""The run log: libraries' output goes to the file, understood warnings stay off the terminal,
anything new still reaches it."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

from patron.logs import UNDERSTOOD, run_log

SITE = "/venv/lib/python3.11/site-packages"


def _warn(message: str, category: type[Warning], module_path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn_explicit(message, category, filename=f"{SITE}/{module_path}", lineno=1)


def test_understood_warnings_go_to_the_file_and_new_ones_reach_the_terminal_too(tmp_path: Path) -> None:
    terminal = io.StringIO()
    log = run_log(tmp_path, "test", terminal).start()
    try:
        for u in UNDERSTOOD:
            assert u.why  # each says why it is harmless
        from sqlalchemy.exc import SADeprecationWarning

        _warn("The ``noload`` loader strategy is deprecated", SADeprecationWarning, "mlflow/store/tracking/sqlalchemy_store.py")
        _warn("Hint: Inferred schema contains integer column(s).", UserWarning, "mlflow/types/utils.py")
        _warn("something new broke", UserWarning, "mlflow/types/utils.py")  # same module, other message
        _warn("Hint: Inferred schema contains integer column(s).", UserWarning, "otherlib/types.py")  # other module
    finally:
        log.close()
    said = log.path.read_text()
    assert "noload" in said and "Hint: Inferred schema" in said and "something new broke" in said
    shown = terminal.getvalue()
    assert "noload" not in shown and "something new broke" in shown and "otherlib" in shown
    assert shown.count("Hint: Inferred schema") == 1


def test_prints_and_library_logs_go_to_the_file_and_patrons_warnings_to_the_terminal(tmp_path: Path) -> None:
    terminal = io.StringIO()
    log = run_log(tmp_path, "test", terminal).start()
    try:
        with log.quiet():
            print("Materializing 1 feature views")
            logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
            logging.getLogger("patron.features.store").warning("the feature store is behind")
    finally:
        log.close()
    said = log.path.read_text()
    assert "Materializing" in said and "Creating initial MLflow database tables" in said and "is behind" in said
    shown = terminal.getvalue()
    assert "Materializing" not in shown and "MLflow database" not in shown and "the feature store is behind" in shown
    # closed: nothing of the run stays attached to the process
    assert not [h for h in logging.getLogger().handlers if getattr(h, "baseFilename", None) == str(log.path)]
