"""The canonical order lines, the quarantine and the ledger that says what is committed.

Each file is committed atomically: its parts are written to a staging folder, moved into place,
and only then recorded in the ledger. Readers see committed parts only (``committed_parts``,
``scan``), and a crashed run's leftovers are removed by the next one."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from patron import duck
from patron.features.ingest.classify import LINE_IDENTITY, STORED_LINE_ID_SQL
from patron.features.ingest.schema import CANONICAL_SCHEMA, QUARANTINE_SCHEMA, FileReport
from patron.rules import VALID_PURCHASE_SQL

log = logging.getLogger(__name__)

_LEDGER_DDL = """
create table if not exists files (
    sha256 text primary key,
    path text not null,
    rows_in integer not null,
    rows_written integer not null,
    quarantined integer not null,
    classes text not null,
    encoding text not null,
    delimiter text not null,
    committed_at text not null
);
create table if not exists parts (
    path text primary key,
    sha256 text not null references files(sha256),
    kind text not null,
    day text,
    rows integer not null
);
create index if not exists parts_by_day on parts (kind, day);
create table if not exists meta (
    key text primary key,
    value text not null
);

"""


class OrderStore:
    """Canonical order lines + quarantine + the ledger that says what is committed."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.canonical = self.data_dir / "order_lines"
        self.quarantine = self.data_dir / "quarantine"
        self.staging = self.data_dir / "staging"
        self.ledger_path = self.data_dir / "ingest.sqlite"

    # -- ledger
    def _connect(self) -> sqlite3.Connection:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.ledger_path, timeout=60)
        if not getattr(self, "_schema_ready", False):
            con.executescript(_LEDGER_DDL)
            self._schema_ready = True
        return con

    @contextmanager
    def lock(self) -> Iterator[None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / ".ingest.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def committed_parts(self, kind: str = "order_lines") -> list[Path]:
        if not self.ledger_path.exists():
            return []
        with self._connect() as con:
            rows = con.execute("select path from parts where kind = ? order by day, path", (kind,)).fetchall()
        return [self.data_dir / r[0] for r in rows]

    def scan(self, kind: str = "order_lines") -> str | None:
        """A DuckDB relation (for a FROM clause) over the committed parts of ``kind``, or None when
        nothing is committed yet: the one way every reader names the canonical files."""
        parts = self.committed_parts(kind)
        return duck.scan(parts) if parts else None

    def first_purchase(self) -> dt.datetime | None:
        """The time of the oldest valid purchase committed, or None when there is none."""
        lines = self.scan()
        if lines is None:
            return None
        with duck.connect() as con:
            (first,) = con.execute(f"SELECT min(invoice_ts) FROM {lines} WHERE {VALID_PURCHASE_SQL}").fetchone()
        return first

    def last_purchase_day(self) -> dt.date | None:
        """The UTC day of the newest valid purchase committed, or None when there is none."""
        lines = self.scan()
        if lines is None:
            return None
        with duck.connect() as con:
            (last,) = con.execute(f"SELECT max(invoice_ts)::DATE FROM {lines} WHERE {VALID_PURCHASE_SQL}").fetchone()
        return last

    def file_record(self, sha256: str) -> dict | None:
        with self._connect() as con:
            row = con.execute(
                "select path, rows_in, rows_written, quarantined, classes, encoding, delimiter from files where sha256 = ?",
                (sha256,),
            ).fetchone()
        if row is None:
            return None
        keys = ("path", "rows_in", "rows_written", "quarantined", "classes", "encoding", "delimiter")
        rec = dict(zip(keys, row))
        rec["classes"] = json.loads(rec["classes"])
        return rec

    def recover(self) -> int:
        """Remove what a crashed run left behind: staging folders and parts not in the ledger."""
        removed = 0
        if self.staging.exists():
            shutil.rmtree(self.staging)
        committed = {p.resolve() for p in self.committed_parts("order_lines") + self.committed_parts("quarantine")}
        for folder in (self.canonical, self.quarantine):
            if not folder.exists():
                continue
            for part in folder.rglob("*.parquet"):
                if part.resolve() not in committed:
                    part.unlink()
                    removed += 1
            for leftover in folder.rglob(".*.migrating"):  # a migration interrupted while writing
                leftover.unlink()
        if removed:
            log.warning("removed %d uncommitted part(s) left by an interrupted ingest", removed)
        return removed

    def migrate_line_ids(self) -> int:
        """Recompute the line ids of a store written with an older line identity; returns the
        number of files migrated. Each part is replaced atomically and the new identity is recorded
        only once all are done, so an interrupted migration simply runs again (it is idempotent:
        the ids come from the stored columns, not from the old ids)."""
        with self._connect() as con:
            row = con.execute("select value from meta where key = 'line_identity'").fetchone()
            if row is not None and int(row[0]) >= LINE_IDENTITY:
                return 0
            parts = con.execute("select sha256, path from parts where kind = 'order_lines' order by sha256, path").fetchall()
        by_file: dict[str, list[Path]] = {}
        for sha, path in parts:
            by_file.setdefault(sha, []).append(self.data_dir / path)
        if by_file:
            log.warning("migrating the line ids of %d ingested file(s) to line identity %d", len(by_file), LINE_IDENTITY)
        names = CANONICAL_SCHEMA.names
        with duck.connect() as con:
            for files in by_file.values():
                table = con.sql(STORED_LINE_ID_SQL, params={"files": [str(f) for f in files]}).to_arrow_table()
                for f in files:
                    part = table.filter(pc.equal(table.column("filename"), str(f))).select(names).cast(CANONICAL_SCHEMA)
                    tmp = f.with_name(f".{f.name}.migrating")
                    pq.write_table(part, tmp, compression="zstd")
                    os.replace(tmp, f)
        with self._connect() as con:
            con.execute("insert or replace into meta values ('line_identity', ?)", (str(LINE_IDENTITY),))
        return len(by_file)

    def line_ids_by_day(self, days: Iterable[str]) -> dict[str, pa.Array]:
        """The ids of the lines committed on each of these days (ISO dates); a day without any is absent."""
        days = sorted(set(days))
        if not days:
            return {}
        with self._connect() as con:
            rows = con.execute(f"select day, path from parts where kind = 'order_lines' and day in ({','.join('?' * len(days))})",
                               days).fetchall()
        out: dict[str, list[pa.Array]] = {}
        for day, path in rows:
            out.setdefault(day, []).extend(pq.read_table(self.data_dir / path, columns=["line_id"]).column("line_id").chunks)
        return {day: pa.concat_arrays(chunks) for day, chunks in out.items()}

    def commit_file(
        self, sha256: str, source: Path, canon: pa.Table, quarantine: pd.DataFrame, report: FileReport
    ) -> None:
        stage = self.staging / sha256
        stage.mkdir(parents=True, exist_ok=True)
        moves: list[tuple[Path, Path, str, str | None, int]] = []
        tag = sha256[:16]
        if canon.num_rows:
            days = day_of(canon.column("invoice_ts"))
            for day in np.unique(days):
                part = canon.filter(pa.array(days == day)).cast(CANONICAL_SCHEMA)
                tmp = stage / f"day={day}.parquet"
                pq.write_table(part, tmp, compression="zstd")
                dest = self.canonical / f"day={day}" / f"part-{tag}.parquet"
                moves.append((tmp, dest, "order_lines", str(day), part.num_rows))
        if len(quarantine):
            tmp = stage / "quarantine.parquet"
            table = pa.Table.from_pandas(quarantine.reset_index(drop=True), schema=QUARANTINE_SCHEMA, preserve_index=False)
            pq.write_table(table, tmp, compression="zstd")
            moves.append((tmp, self.quarantine / f"part-{tag}.parquet", "quarantine", None, len(quarantine)))
        for tmp, dest, *_ in moves:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
        # The ledger row is the commit point: until it exists, readers ignore the moved parts and
        # the next run's recover() deletes them.
        with self._connect() as con:
            con.execute(
                "insert into files values (?,?,?,?,?,?,?,?,?)",
                (
                    sha256,
                    str(source),
                    report.rows_in,
                    report.rows_written,
                    report.quarantined,
                    json.dumps(report.classes),
                    report.encoding,
                    report.delimiter,
                    dt.datetime.now(dt.timezone.utc).isoformat(),
                ),
            )
            con.executemany(
                "insert or replace into parts values (?,?,?,?,?)",
                [(str(dest.relative_to(self.data_dir)), sha256, kind, day, rows) for _, dest, kind, day, rows in moves],
            )
        shutil.rmtree(stage, ignore_errors=True)


def day_of(ts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The UTC day of each timestamp, as ISO dates (numpy casting; strftime is far slower)."""
    return ts.cast(pa.int64()).to_numpy().astype("datetime64[us]").astype("datetime64[D]").astype(str)


def read_quarantine(data_dir: Path) -> pd.DataFrame:
    """Every rejected row with its reason, as committed."""
    parts = OrderStore(data_dir).committed_parts("quarantine")
    if not parts:
        return QUARANTINE_SCHEMA.empty_table().to_pandas()
    return pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)
