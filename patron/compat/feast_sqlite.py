"""Feast's SQLite online store, with its connection in WAL mode and its tables named for readers.

What it relies on (Feast 0.67.0, ``feast/infra/online_stores/sqlite.py``): ``SqliteOnlineStore``
keeps its connection in ``self._conn``, opened by ``_get_conn(config)`` from the file that
``_get_db_path(config)`` names (its assertion wants a store type ending in ``SqliteOnlineStore``);
its tables are named by the public ``feast.infra.online_stores.helpers.compute_table_id``.

Why: the service writes storefront events into the store while it serves reads, and in SQLite's
default journal mode each write locks the readers out (docs/benchmarks.md, "Storefront events").
WAL is a property of the database file, but the busy timeout is one of the connection, so Feast's
own connection is configured where Feast opens it.

Upstream: Feast has no setting for the SQLite journal mode or busy timeout; the thread-safety
of its SQLite connection was reported in https://github.com/feast-dev/feast/issues/2233 (closed
as won't fix, suggesting a second connection for reads, which is what
:mod:`patron.features.online_sqlite` does).
"""

from __future__ import annotations

import sqlite3

from patron.compat import require

KNOWN_VERSIONS = ("0.67.0",)
VERSION = require("feast", KNOWN_VERSIONS, __name__)

from feast.infra.online_stores.helpers import compute_table_id  # noqa: E402
from feast.infra.online_stores.sqlite import SqliteOnlineStore  # noqa: E402
from feast.repo_config import RepoConfig  # noqa: E402


class WalSqliteOnlineStore(SqliteOnlineStore):
    """Feast's SQLite store whose connection runs in WAL mode with a busy timeout."""

    def _get_conn(self, config: RepoConfig):
        fresh = not self._conn
        conn = super()._get_conn(config)
        if fresh:
            conn.execute("pragma journal_mode=wal")
            conn.execute("pragma busy_timeout=10000")
        return conn

    @staticmethod
    def database_path(config: RepoConfig) -> str:
        """The SQLite file of the store, as Feast resolves it."""
        return SqliteOnlineStore._get_db_path(config)


def table_name(config: RepoConfig, view) -> str:
    """The quoted name of a feature view's table in the online store."""
    name = compute_table_id(config.project, view, config.registry.enable_online_feature_view_versioning)
    return '"' + name.replace('"', '""') + '"'


def read_connection(path: str) -> sqlite3.Connection:
    """A connection for reads only: no type detection (timestamps stay the integers Feast wrote)."""
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("pragma journal_mode=wal")
    return conn
