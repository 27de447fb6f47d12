"""The run log: what a command's libraries say goes to a file of the state directory, and the
terminal shows only Patron's own lines.

Third-party libraries speak in three ways, and each is routed here:

* log records (MLflow's "creating tables", BentoML, Feast): every logger writes to the run's file;
  the terminal gets Patron's own warnings and errors only;
* warnings: those understood (listed in :data:`UNDERSTOOD`, by category and module, each with the
  reason it is harmless) go to the file only; any other warning still reaches the terminal as well,
  so that a new one is seen;
* prints (Feast's coloured progress, MLflow's "Successfully registered model"): inside
  :func:`quiet`, Python-level writes to stdout and stderr go to the file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass(frozen=True)
class Understood:
    category: type[Warning]
    module: str  # regex on the module the warning is attributed to
    message: str  # regex on the start of its text
    why: str


def _sqlalchemy_deprecation() -> type[Warning]:
    try:
        from sqlalchemy.exc import SADeprecationWarning

        return SADeprecationWarning
    except ImportError:  # pragma: no cover - SQLAlchemy comes with MLflow
        return DeprecationWarning


UNDERSTOOD: tuple[Understood, ...] = (
    Understood(_sqlalchemy_deprecation(), r"mlflow\.store\.", r"The ``noload`` loader strategy is deprecated",
               "MLflow 3.17's tracking store configures SQLAlchemy with a strategy SQLAlchemy 2.1 deprecates; nothing to do on our side"),
    Understood(UserWarning, r"mlflow\.types\.utils", r"Hint: Inferred schema contains integer column",
               "the models' signatures declare customer ids as integers on purpose: an id is never missing"),
    Understood(FutureWarning, r"mlflow\.", r".*",
               "MLflow announcing changes to its own defaults; the pinned version's behaviour is what is tested"),
    Understood(DeprecationWarning, r"ibis\.backends\.duckdb", r"fetch_arrow_table\(\) is deprecated",
               "ibis 12 (under Feast's DuckDB offline store) calls DuckDB 2.0's older name for the same method"),
    Understood(RuntimeWarning, r"feast\.infra\.offline_stores\.contrib\.spark_offline_store\.",
               r"The spark (data source API|offline store) is an experimental feature",
               "Feast calls its Spark source and offline store experimental on every use; tests/test_spark.py holds the "
               "pinned version to the embedded engine's results"),
)


class _Router:
    """``warnings.showwarning`` for a run: every warning to the file, unknown ones to the terminal too."""

    def __init__(self, file: TextIO, terminal: TextIO) -> None:
        self.file, self.terminal = file, terminal

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = warnings.formatwarning(message, category, filename, lineno, line)
        self.file.write(text)
        self.file.flush()
        module = _module_of(filename)
        known = any(issubclass(category, u.category) and re.match(u.module, module) and re.match(u.message, str(message))
                    for u in UNDERSTOOD)
        if not known:
            self.terminal.write(text)


def _module_of(filename: str) -> str:
    """The dotted module of a file inside site-packages (or the path, when it is not)."""
    parts = Path(filename).with_suffix("").parts
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            return ".".join(parts[parts.index(anchor) + 1:])
    return filename


class RunLog:
    """The log file of one command and the routing of libraries' output into it."""

    def __init__(self, path: Path, terminal: TextIO) -> None:
        self.path = path
        self.terminal = terminal
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed by close()
        self._handler = logging.FileHandler(path, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._previous_showwarning = warnings.showwarning

    def start(self, *, verbose: bool = False) -> RunLog:
        root = logging.getLogger()
        root.setLevel(logging.INFO)
        root.addHandler(self._handler)
        console = logging.StreamHandler(self.terminal)
        console.setLevel(logging.INFO if verbose else logging.WARNING)
        console.addFilter(lambda record: record.name.startswith("patron"))
        console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(console)
        self._console = console
        # libraries that set up handlers of their own write to the file instead
        for name in ("mlflow", "feast", "bentoml", "alembic", "sqlalchemy"):
            lib = logging.getLogger(name)
            for h in list(lib.handlers):
                lib.removeHandler(h)
            lib.propagate = True
        warnings.showwarning = _Router(self.file, self.terminal)
        return self

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Libraries' prints go to the file while inside."""
        with contextlib.redirect_stdout(self.file), contextlib.redirect_stderr(self.file):
            yield

    def close(self) -> None:
        warnings.showwarning = self._previous_showwarning
        root = logging.getLogger()
        for h in (self._handler, getattr(self, "_console", None)):
            if h is not None:
                root.removeHandler(h)
                h.close()
        self.file.close()


def run_log(logs_dir: Path, command: str, terminal: TextIO | None = None) -> RunLog:
    """A new, not yet started, log file ``<logs_dir>/<command>-<UTC time>.log``."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return RunLog(logs_dir / f"{command}-{stamp}.log", terminal or sys.stderr)
