"""Feast's DuckDB offline store, reading a file source's relative path from the feature repo.

Patron's file sources name their Parquet tables relative to the feature repo (``data/...``), so
that two state directories never read each other's tables and a state directory can be moved.
Feast's file offline store resolves such a path against the repo path; its DuckDB offline store
passes the path to DuckDB unchanged, which resolves it against the process's working directory.

What it relies on (Feast 0.67.0, ``feast/infra/offline_stores/duckdb.py``): the module function
``_read_data_source(data_source, repo_path)``, which every read of the store (point-in-time joins,
materialisation) looks up by name at call time, and ``FileSource.get_uri_for_file_path`` (public),
the file store's own resolution.

Upstream: the DuckDB store ignores its ``repo_path`` argument for file sources (the reader's
signature has it; only other source kinds use it).
"""

from __future__ import annotations

import copy
from pathlib import Path

from patron.compat import require

KNOWN_VERSIONS = ("0.67.0",)
VERSION = require("feast", KNOWN_VERSIONS, __name__)

from feast import FileSource  # noqa: E402
from feast.infra.offline_stores import duckdb as duckdb_store  # noqa: E402


def _relative(path: str) -> bool:
    return "://" not in path and not Path(path).is_absolute()


def install() -> None:
    """Make the DuckDB offline store resolve relative file paths against the repo path (idempotent)."""
    original = duckdb_store._read_data_source
    if getattr(original, "_patron_resolves_paths", False):
        return

    def read_data_source(data_source, repo_path):
        if isinstance(data_source, FileSource) and repo_path and _relative(data_source.path):
            data_source = copy.copy(data_source)
            data_source.file_options = copy.copy(data_source.file_options)
            data_source.file_options.uri = FileSource.get_uri_for_file_path(Path(repo_path), data_source.path)
        return original(data_source, repo_path)

    read_data_source._patron_resolves_paths = True
    duckdb_store._read_data_source = read_data_source
