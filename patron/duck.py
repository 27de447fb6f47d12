"""DuckDB the way Patron uses it: UTC sessions, and the canonical Parquet files as one relation.

Every query over order lines or feature tables goes through :func:`connect` (so that timestamps
mean the same everywhere) and names its files through :func:`scan` (so that a path with a quote
in it cannot break or change the SQL).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb

from patron.errors import PatronError

UTC_SESSION = "SET TimeZone = 'UTC'"  # every session Patron opens, its own or a library's


class OutOfMemory(PatronError):
    """A query needed more memory than DuckDB may use, even spilling to disk."""


def memory_limit() -> str:
    """The memory a batch query may use (``PATRON_DUCKDB_MEMORY_LIMIT``)."""
    from patron.settings import PatronSettings

    return PatronSettings().duckdb_memory_limit


_UNITS = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}


def limit_bytes(limit: str) -> float:
    """``3GB``, ``1.5 GiB``, ``500MB`` (DuckDB's notation: GB = 1000^3, GiB = 1024^3) in bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)B\s*", limit, re.IGNORECASE)
    if not m:
        raise ValueError(f"a memory limit such as 3GB or 1.5GiB was expected, got {limit!r}")
    return float(m.group(1)) * _UNITS[m.group(2).upper()]


@contextlib.contextmanager
def within_memory(what: str, limit: str) -> Iterator[None]:
    """Turn DuckDB's out-of-memory error into one that says what met the limit and what would help."""
    try:
        yield
    except duckdb.OutOfMemoryException as exc:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
        raise OutOfMemory(
            f"{what} needed more than the {limit} of memory DuckDB may use, even spilling to disk: raise "
            f"PATRON_DUCKDB_MEMORY_LIMIT (this machine has {free:.1f} GiB free now), or free disk space for "
            f"the spill files (DuckDB: {_first_line(exc)})"
        ) from exc


def _first_line(exc: Exception) -> str:
    """The head of DuckDB's own message: which allocation failed and how much was in use."""
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]


def quote(text: str | Path) -> str:
    """A SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def scan(paths: Sequence[str | Path]) -> str:
    """``read_parquet([...])`` over the given files, for a FROM clause."""
    if not paths:
        raise ValueError("scan() needs at least one Parquet file")
    return f"read_parquet([{', '.join(quote(p) for p in paths)}])"


_SHARED: dict[tuple[int, str], duckdb.DuckDBPyConnection] = {}


@contextlib.contextmanager
def session(memory_limit: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """A session of its own (temporary views, tables and registered frames are its alone) on one
    in-memory database per process and memory limit: opening a database costs tens of
    milliseconds, a session on it almost nothing, and many small queries in a row add up."""
    key = (os.getpid(), memory_limit)  # a database is never used across a fork
    if key not in _SHARED:
        _SHARED[key] = connect(memory_limit=memory_limit)
    con = _SHARED[key].cursor()
    try:
        con.execute(UTC_SESSION)
        yield con
    finally:
        con.close()


_SPILL: dict[int, Path] = {}


def _private_spill() -> Path:
    """This process's folder for DuckDB's spill files when the caller names none: readable by its
    user only and removed at exit (DuckDB's own default is ``.tmp`` in the working directory,
    where order lines would land beside whatever the user runs Patron from). A forked child
    gets a folder of its own and never removes its parent's."""
    pid = os.getpid()
    if pid not in _SPILL:
        import atexit
        import tempfile

        _SPILL[pid] = Path(tempfile.mkdtemp(prefix="patron-duckdb-"))
        atexit.register(_remove_spill, pid)
    return _SPILL[pid]


def _remove_spill(pid: int) -> None:
    import shutil

    if os.getpid() == pid:
        shutil.rmtree(_SPILL[pid], ignore_errors=True)


def connect(*, memory_limit: str | None = None, temp_dir: Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB session in UTC; with ``memory_limit`` it spills to ``temp_dir`` (by
    default a private folder of this process) instead of growing past the limit."""
    con = duckdb.connect()
    con.execute(UTC_SESSION)
    con.execute(f"SET temp_directory = {quote(temp_dir if temp_dir is not None else _private_spill())}")
    if memory_limit:
        con.execute("SET preserve_insertion_order = false")  # lets large aggregations stream
        con.execute(f"SET memory_limit = {quote(memory_limit)}")
    return con
