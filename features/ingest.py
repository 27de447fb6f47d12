"""Ingestion of raw order exports into canonical, day-partitioned order lines.

Every input row ends up in exactly one class:

- ``sale``: a product line of a known customer;
- ``return``: a cancellation or return of a known customer (``C`` invoice or negative quantity);
- ``guest``: a valid product line (sale or return) without a customer id;
- ``non_product``: postage, fees, manual adjustments, discounts, samples, gift vouchers;
- ``invalid``: anything that cannot be trusted (unparsable or implausible values); quarantined.

The first four are stored as canonical order lines (Parquet, one folder per day); invalid rows go
to the quarantine with the reason. Each file is committed atomically: its parts are written to a
staging folder, moved into place, and only then recorded in the ledger. Readers see committed
parts only (``committed_parts``), and a crashed run's leftovers are removed by the next one, so a
file that dies half-way leaves the store as it was.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import fcntl
import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sqlite3
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from patron import duck
from patron.faults import crash_point
from patron.rules import CANCELLATION_PREFIX, LINE_CLASSES, non_product_sql

log = logging.getLogger(__name__)

RAW_COLUMNS: tuple[str, ...] = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
)
# Shops that export little or no product detail still have customers, dates and amounts: these
# columns may be absent (read as empty), and a line with an empty StockCode is a purchase of an
# unknown product (item_id NULL), which the customer models use and the recommender skips.
OPTIONAL_COLUMNS: tuple[str, ...] = ("StockCode", "Description", "Country")
SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".parquet")

# Spreadsheet formula injection: a text cell starting like this would run in the CRM's spreadsheet.
_FORMULA_RE = re.compile(r"^[=+@\t\r]|^-[^0-9.\s]")
DATE_FORMATS: tuple[str, ...] = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M:%S",
    "%m/%d/%Y %H:%M",
)
_EARLIEST = dt.datetime(1990, 1, 1)
_DELIMITERS = (",", ";", "\t", "|")

CANONICAL_SCHEMA = pa.schema(
    [
        ("line_id", pa.int64()),
        ("invoice_no", pa.string()),
        ("item_id", pa.string()),
        ("description", pa.string()),
        ("quantity", pa.int64()),
        ("unit_price", pa.float64()),
        ("amount", pa.float64()),
        ("invoice_ts", pa.timestamp("us", tz="UTC")),
        ("customer_id", pa.int64()),
        ("country", pa.string()),
        ("line_class", pa.string()),
        ("source_file", pa.string()),
        ("source_line", pa.int64()),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [(c, pa.string()) for c in RAW_COLUMNS]
    + [
        ("raw_line", pa.string()),
        ("reason", pa.string()),
        ("source_file", pa.string()),
        ("source_line", pa.int64()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)


class IngestError(Exception):
    """A file cannot be ingested at all; nothing of it was stored."""


class SchemaError(IngestError):
    """Columns are missing, unexpected or duplicated."""


class UnreadableFileError(IngestError):
    """The file is truncated, corrupt or of an unknown format."""


@dataclass
class FileReport:
    path: str
    sha256: str
    status: str  # ingested | already_ingested
    rows_in: int
    rows_written: int
    quarantined: int
    classes: dict[str, int]
    encoding: str = "utf-8"
    delimiter: str = ","


@dataclass
class IngestReport:
    rows_in: int = 0
    rows_written: int = 0
    classes: dict[str, int] = field(default_factory=lambda: {c: 0 for c in LINE_CLASSES})
    quarantined: int = 0
    files: list[FileReport] = field(default_factory=list)

    def add(self, fr: FileReport) -> None:
        self.files.append(fr)
        self.rows_in += fr.rows_in
        self.rows_written += fr.rows_written
        self.quarantined += fr.quarantined
        for k, v in fr.classes.items():
            self.classes[k] = self.classes.get(k, 0) + v

    def to_dict(self) -> dict:
        return {
            "rows_in": self.rows_in,
            "rows_written": self.rows_written,
            "classes": dict(self.classes),
            "quarantined": self.quarantined,
            "files_ingested": sum(f.status == "ingested" for f in self.files),
            "files_already_ingested": sum(f.status == "already_ingested" for f in self.files),
            "files": [asdict(f) for f in self.files],
        }


# --------------------------------------------------------------------------- reading raw files


@dataclass
class RawFrame:
    """All rows of one file as text, plus rows that could not be split into the eight columns."""

    frame: pa.Table  # RAW_COLUMNS as strings + source_file + source_line
    broken: pd.DataFrame  # source_file, source_line, raw_line, reason
    encoding: str
    delimiter: str

    @property
    def rows(self) -> int:
        return self.frame.num_rows + len(self.broken)

    @staticmethod
    def concat(frames: Sequence["RawFrame"]) -> "RawFrame":
        """Several files classified in one pass: per-call overhead dominates for daily files."""
        return RawFrame(
            pa.concat_tables([f.frame for f in frames]),
            pd.concat([f.broken for f in frames], ignore_index=True),
            "mixed",
            "mixed",
        )


def _broken_frame(source_file: str, broken: list[tuple[int, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_file": pd.Series([source_file] * len(broken), dtype=object),
            "source_line": np.asarray([b[0] for b in broken], dtype=np.int64),
            "raw_line": pd.Series([b[1] for b in broken], dtype=object),
            "reason": pd.Series([b[2] for b in broken], dtype=object),
        }
    )


def find_files(sources: Sequence[Path]) -> list[Path]:
    """Expand folders into their ingestible files, sorted so that days are ingested in order."""
    out: list[Path] = []
    for src in sources:
        src = Path(src)
        if src.is_dir():
            found = sorted(p for p in src.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
            if not found:
                raise IngestError(f"{src}: expected .csv, .csv.gz or .parquet files in this folder, found none")
            out.extend(found)
        elif src.is_file():
            if not src.name.endswith(SUFFIXES):
                raise IngestError(f"{src}: expected a .csv, .csv.gz or .parquet file, got {src.suffix or 'no suffix'!r}")
            out.append(src)
        else:
            raise IngestError(f"{src}: no such file or folder")
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            return gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise UnreadableFileError(f"{path}: compressed stream is truncated or corrupt ({exc}); nothing from it was stored") from exc
    return data


_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _decode(data: bytes) -> tuple[str, str]:
    """Exports come from spreadsheets and shop systems: UTF-8 (maybe with a BOM), Windows-1252, or
    UTF-16 with its BOM (a spreadsheet's "Unicode text")."""
    if data.startswith(_UTF16_BOMS):
        return data[: len(data) // 2 * 2].decode("utf-16", errors="replace"), "utf-16"
    for enc in ("utf-8-sig", "cp1252"):
        try:
            text = data.decode(enc)
            return text, ("utf-8" if enc == "utf-8-sig" else enc)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1"), "latin-1"  # every byte sequence decodes; odd characters stay visible


def _check_header(header: Sequence[str], path: Path) -> None:
    names = [h.strip() for h in header]
    dupes = sorted({n for n in names if names.count(n) > 1})
    missing = [c for c in RAW_COLUMNS if c not in names and c not in OPTIONAL_COLUMNS]
    unexpected = [n for n in names if n not in RAW_COLUMNS]
    problems = []
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected column(s) {', '.join(repr(u) for u in unexpected)}")
    if dupes:
        problems.append(f"duplicated column(s) {', '.join(dupes)}")
    if problems:
        raise SchemaError(
            f"{path}: {'; '.join(problems)}. Expected the columns {', '.join(RAW_COLUMNS)} "
            f"({', '.join(OPTIONAL_COLUMNS)} may be left out); nothing from it was stored"
        )


def read_header(path: Path) -> list[str]:
    """The column names of a file, read cheaply so that a whole run can be checked before writing."""
    if path.name.endswith(".parquet"):
        try:
            return list(pq.read_schema(path).names)
        except Exception as exc:  # pyarrow raises several types for a damaged footer
            raise UnreadableFileError(f"{path}: not a readable Parquet file ({exc}); nothing from it was stored") from exc
    opener: Callable[..., io.BufferedIOBase] = gzip.open if path.name.endswith(".gz") else open  # type: ignore[assignment]
    try:
        with opener(path, "rb") as fh:
            first = fh.read(1 << 16)
    except (EOFError, OSError, zlib.error) as exc:
        raise UnreadableFileError(f"{path}: cannot read ({exc}); nothing from it was stored") from exc
    _refuse_binary(first, path)
    text, _ = _decode(first)
    line = text.split("\n", 1)[0].rstrip("\r")
    delim = max(_DELIMITERS, key=line.count)
    return next(csv.reader([line], delimiter=delim))


def validate_header(path: Path) -> None:
    _check_header(read_header(path), path)


def read_raw(path: Path) -> RawFrame:
    if path.name.endswith(".parquet"):
        return _read_parquet(path)
    return _read_csv(path)


def _read_parquet(path: Path) -> RawFrame:
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise UnreadableFileError(f"{path}: not a readable Parquet file ({exc}); nothing from it was stored") from exc
    _check_header(table.column_names, path)
    n = table.num_rows
    empty = pa.array([""] * n, pa.string())
    frame = _raw_table(
        [pc.fill_null(table.column(c).cast(pa.string()), "") if c in table.column_names else empty for c in RAW_COLUMNS],
        path.name,
        np.arange(1, n + 1),
    )
    return RawFrame(frame, _broken_frame(path.name, []), "parquet", "")


def _refuse_binary(head: bytes, path: Path) -> None:
    if b"\x00" in head and not head.startswith(_UTF16_BOMS):
        raise UnreadableFileError(f"{path}: holds NUL bytes, so it is not CSV text (a binary or mis-encoded file); nothing from it was stored")


def _read_csv(path: Path) -> RawFrame:
    data = _read_bytes(path)
    _refuse_binary(data[: 1 << 16], path)
    text, encoding = _decode(data)
    if not text.strip():
        raise SchemaError(f"{path}: empty file; expected a header line with {', '.join(RAW_COLUMNS)}")
    first_line = text.split("\n", 1)[0].rstrip("\r")
    delimiter = max(_DELIMITERS, key=first_line.count)
    truncated_tail = not text.endswith(("\n", "\r"))
    n = len(RAW_COLUMNS)
    width = n  # fields per row: the header's
    rows: list[list[str]] = []
    lines: list[int] = []
    broken: list[tuple[int, str, str]] = []
    # A single absurdly long field must not stop the file: cap what one field may hold and
    # quarantine the row that exceeds it.
    csv.field_size_limit(1 << 20)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False)
    header: list[str] | None = None
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            broken.append((reader.line_num, "", f"unreadable CSV row: {exc}"))
            continue
        if header is None:
            header = row
            _check_header(header, path)
            names = [h.strip() for h in header]
            width = len(names)
            # -1: an optional column the file does not have, read as empty
            order = [names.index(c) if c in names else -1 for c in RAW_COLUMNS]
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line, not a row
        if len(row) != width:
            broken.append(
                (reader.line_num, delimiter.join(row)[:10_000], f"expected {width} fields separated by {delimiter!r}, got {len(row)}")
            )
            continue
        rows.append([row[i] if i >= 0 else "" for i in order])
        lines.append(reader.line_num)
    if truncated_tail and broken and broken[-1][0] == reader.line_num:
        # The last line has no line end and the wrong number of fields: the file was cut off.
        raise UnreadableFileError(
            f"{path}: looks truncated (line {reader.line_num} is incomplete and has no line end); nothing from it was stored"
        )
    if header is None:
        raise SchemaError(f"{path}: no header line; expected {', '.join(RAW_COLUMNS)}")
    columns = [pa.array(col, pa.string()) for col in zip(*rows)] if rows else [pa.array([], pa.string())] * n
    frame = _raw_table(columns, path.name, np.asarray(lines, dtype=np.int64))
    return RawFrame(frame, _broken_frame(path.name, broken), encoding, delimiter)


def _raw_table(columns: Sequence[pa.Array | pa.ChunkedArray], source_file: str, lines: np.ndarray) -> pa.Table:
    n = len(lines)
    return pa.table(
        list(columns) + [pa.array([source_file] * n, pa.string()), pa.array(lines, pa.int64())],
        names=[*RAW_COLUMNS, "source_file", "source_line"],
    )


# --------------------------------------------------------------------------- classification


@dataclass
class Classified:
    canonical: pd.DataFrame  # CANONICAL_SCHEMA columns
    quarantine: pd.DataFrame  # QUARANTINE_SCHEMA columns
    classes: dict[str, dict[str, int]]  # per source file


def _quoted(col: str) -> str:
    """SQL for: the column's raw text, quoted the way Python's repr would, cut at 40 characters."""
    return "'" + col + " ''' || left(trim(" + col + "), 40) || ''''"


_CLASSIFY_SQL = r"""
WITH t AS (
    SELECT *,
        upper(trim(InvoiceNo)) AS invoice,
        upper(trim(StockCode)) AS stock,
        regexp_replace(trim(Description), '\s+', ' ', 'g') AS descr,
        trim(Country) AS country_,
        TRY_CAST(trim(Quantity) AS DOUBLE) AS qty_f,
        TRY_CAST(trim(UnitPrice) AS DOUBLE) AS price,
        TRY_CAST(trim(CustomerID) AS DOUBLE) AS cust_f,
        trim(CustomerID) <> '' AS has_cust,
        try_strptime(trim(InvoiceDate), $formats) AS ts
    FROM raw
),
f AS (
    SELECT *,
        {non_product} AS is_non_product,
        starts_with(invoice, {cancellation}) AS is_cancel,
        coalesce(qty_f, 0) AS qty
    FROM t
),
r AS (
    SELECT *, CASE
        WHEN invoice = 'INVOICENO' AND stock = 'STOCKCODE' THEN 'repeated header line'
        {formula_cases}
        WHEN invoice = '' THEN 'InvoiceNo is empty'
        WHEN qty_f IS NULL THEN {q_qty} || ' is not a number'
        WHEN NOT isfinite(qty_f) OR qty_f <> floor(qty_f) THEN {q_qty} || ' is not a whole number'
        WHEN price IS NULL OR NOT isfinite(price) THEN {q_price} || ' is not a number'
        WHEN ts IS NULL THEN {q_date} || ' is not a timestamp (expected YYYY-MM-DD HH:MM:SS)'
        WHEN ts < $earliest OR ts > $latest THEN {q_date} || ' is outside the plausible range'
        WHEN has_cust AND (cust_f IS NULL OR NOT isfinite(cust_f) OR cust_f <> floor(cust_f) OR cust_f <= 0 OR cust_f > 9007199254740992)
            THEN {q_cust} || ' is not a positive whole number'
        -- checked only for product lines: fees and adjustments legitimately carry odd prices
        WHEN NOT is_non_product AND qty = 0 THEN 'Quantity is 0'
        WHEN NOT is_non_product AND price <= 0 THEN {q_price} || ' is not positive for a product line'
        WHEN NOT is_non_product AND abs(qty) >= $max_qty THEN {q_qty} || ' is implausible (|quantity| >= ' || $max_qty || ')'
        WHEN NOT is_non_product AND is_cancel AND qty > 0 THEN 'cancellation invoice with a positive quantity'
        ELSE NULL END AS reason
    FROM f
)
SELECT *,
    CASE WHEN reason IS NOT NULL THEN 'invalid'
         WHEN is_non_product THEN 'non_product'
         WHEN NOT has_cust THEN 'guest'
         WHEN is_cancel OR qty < 0 THEN 'return'
         ELSE 'sale' END AS line_class,
    -- identical rows can legitimately repeat within an invoice; the occurrence number keeps them
    -- apart while still recognising the same line in a later re-export of the same orders
    (md5_number_upper(concat_ws(chr(31), line_key,
        (row_number() OVER (PARTITION BY source_file, line_key, reason IS NULL ORDER BY source_line) - 1)::VARCHAR))
        & 9223372036854775807)::BIGINT AS line_id
FROM (
    -- A line is its invoice, product, quantity, price and customer, as values rather than as the
    -- text of one export ("6" and "6.0", "17850" and "17850.0" are the same). The time is left
    -- out: the invoice fixes the order, and another system's clock (the storefront's events,
    -- with seconds and another time zone) must not make the same line look new.
    -- (LINE_KEY_SQL below must compute the same key from the stored columns)
    SELECT *, concat_ws(chr(31), coalesce(invoice, ''), coalesce(stock, ''),
        coalesce(TRY_CAST(qty_f AS BIGINT)::VARCHAR, trim(Quantity)),
        coalesce(printf('%.4f', price), trim(UnitPrice)),
        CASE WHEN has_cust THEN coalesce(TRY_CAST(cust_f AS BIGINT)::VARCHAR, trim(CustomerID)) ELSE '' END) AS line_key
    FROM r
)
"""


# How a line is identified (see _CLASSIFY_SQL). Stores written with an older identity are
# migrated when ingestion next opens them (OrderStore.migrate_line_ids).
LINE_IDENTITY = 2
# The key of _CLASSIFY_SQL computed from stored canonical columns, for the migration.
_STORED_LINE_ID_SQL = """
SELECT * EXCLUDE (k) REPLACE (
    (md5_number_upper(concat_ws(chr(31), k, (row_number() OVER (PARTITION BY k ORDER BY source_line) - 1)::VARCHAR))
        & 9223372036854775807)::BIGINT AS line_id)
FROM (
    SELECT *, concat_ws(chr(31), invoice_no, coalesce(item_id, ''), quantity::VARCHAR, printf('%.4f', unit_price),
                        coalesce(customer_id::VARCHAR, '')) AS k
    FROM read_parquet($files, filename = true)
)
"""


def classify(raw: RawFrame, *, max_abs_quantity: int, now: dt.datetime | None = None) -> Classified:
    """Normalise types and give every row exactly one class (see the module docstring).

    Runs as one DuckDB query over the Arrow batch: vectorised and multi-threaded, which matters
    at tens of millions of lines.
    """
    now = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    sql = _CLASSIFY_SQL.format(
        non_product=non_product_sql("stock"),
        cancellation=duck.quote(CANCELLATION_PREFIX),
        formula_cases="\n        ".join(
            f"WHEN regexp_matches(trim({c}), {duck.quote(_FORMULA_RE.pattern)}) THEN '{c} looks like a spreadsheet formula'"
            for c in ("InvoiceNo", "StockCode", "Description", "Country", "CustomerID")
        ),
        q_qty=_quoted("Quantity"),
        q_price=_quoted("UnitPrice"),
        q_date=_quoted("InvoiceDate"),
        q_cust=_quoted("CustomerID"),
    )
    params = {
        "formats": list(DATE_FORMATS),
        "earliest": _EARLIEST,
        "latest": now + dt.timedelta(days=1),
        "max_qty": max_abs_quantity,
    }
    con = duck.connect()
    try:
        con.register("raw", raw.frame)
        con.execute(f"CREATE TEMP TABLE c AS {sql}", params)
        canon = con.sql(
            """SELECT line_id, invoice AS invoice_no, nullif(stock, '') AS item_id, descr AS description,
                      qty::BIGINT AS quantity, price AS unit_price, qty * price AS amount,
                      timezone('UTC', ts) AS invoice_ts,
                      CASE WHEN has_cust THEN cust_f::BIGINT END AS customer_id,
                      country_ AS country, line_class, source_file, source_line
               FROM c WHERE line_class <> 'invalid' ORDER BY source_file, source_line"""
        ).to_arrow_table()
        quarantine = con.execute(
            f"""SELECT {", ".join(RAW_COLUMNS)}, NULL::VARCHAR AS raw_line, reason, source_file, source_line
                FROM c WHERE line_class = 'invalid' ORDER BY source_file, source_line"""
        ).df()
        counts = con.execute("SELECT source_file, line_class, count(*) FROM c GROUP BY ALL").fetchall()
    finally:
        con.close()

    if len(raw.broken):
        b = raw.broken.copy()
        for c in RAW_COLUMNS:
            b[c] = None
        quarantine = pd.concat([quarantine, b[quarantine.columns]], ignore_index=True)
    quarantine["ingested_at"] = pd.Timestamp.now(tz="UTC")

    files = set(raw.frame.column("source_file").to_pylist()) | set(raw.broken["source_file"])
    classes = {f: {c: 0 for c in LINE_CLASSES} for f in files}
    for f, c, k in counts:
        classes[f][c] += int(k)
    for f, k in raw.broken["source_file"].value_counts().items():
        classes[f]["invalid"] += int(k)
    if sum(sum(v.values()) for v in classes.values()) != raw.rows:
        raise AssertionError("classification lost rows")  # an invariant, never an input problem
    canon_df = canon.to_pandas()
    canon_df["customer_id"] = canon_df["customer_id"].astype("Int64")
    return Classified(canon_df, quarantine, classes)


# --------------------------------------------------------------------------- the store


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
    def _lock(self) -> Iterator[None]:
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
                table = con.sql(_STORED_LINE_ID_SQL, params={"files": [str(f) for f in files]}).to_arrow_table()
                for f in files:
                    part = table.filter(pc.equal(table.column("filename"), str(f))).select(names).cast(CANONICAL_SCHEMA)
                    tmp = f.with_name(f".{f.name}.migrating")
                    pq.write_table(part, tmp, compression="zstd")
                    os.replace(tmp, f)
        with self._connect() as con:
            con.execute("insert or replace into meta values ('line_identity', ?)", (str(LINE_IDENTITY),))
        return len(by_file)

    def existing_line_ids(self, days: Iterable[str]) -> set[int]:
        days = set(days)
        with self._connect() as con:
            rows = con.execute("select path, day from parts where kind = 'order_lines'").fetchall()
        paths = [self.data_dir / p for p, d in rows if d in days]
        ids: set[int] = set()
        for p in paths:
            ids.update(pq.read_table(p, columns=["line_id"]).column("line_id").to_pylist())
        return ids

    def commit_file(
        self, sha256: str, source: Path, canon: pd.DataFrame, quarantine: pd.DataFrame, report: FileReport
    ) -> None:
        stage = self.staging / sha256
        stage.mkdir(parents=True, exist_ok=True)
        moves: list[tuple[Path, Path, str, str | None, int]] = []
        tag = sha256[:16]
        if len(canon):
            for day, part in canon.groupby(_days(canon["invoice_ts"]), sort=True):
                tmp = stage / f"day={day}.parquet"
                table = pa.Table.from_pandas(part.reset_index(drop=True), schema=CANONICAL_SCHEMA, preserve_index=False)
                pq.write_table(table, tmp, compression="zstd")
                dest = self.canonical / f"day={day}" / f"part-{tag}.parquet"
                moves.append((tmp, dest, "order_lines", str(day), len(part)))
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


def _days(ts: pd.Series) -> np.ndarray:
    """ISO day of each timestamp (numpy casting; strftime is far slower)."""
    return ts.dt.tz_convert(None).to_numpy().astype("datetime64[D]").astype(str)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ingest(
    sources: Sequence[Path],
    data_dir: Path,
    *,
    max_abs_quantity: int = 10_000,
    batch_rows: int = 400_000,
    progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Ingest files or folders of raw exports; see the module docstring for the guarantees.

    Every file's header is checked before anything is written, so a run with a malformed file
    changes nothing. A file that fails later (truncated, corrupt) is refused whole; files before
    it stay committed, and the error says which file. Files are read and classified in batches
    (one vectorised pass for many small daily files) but committed one by one.
    """
    files = find_files(sources)
    for path in files:
        validate_header(path)
    store = OrderStore(data_dir)
    report = IngestReport()
    with store._lock():
        store.recover()
        store.migrate_line_ids()
        pending: list[tuple[Path, str, RawFrame]] = []
        pending_rows = 0
        for path in files:
            digest = _sha256(path)
            record = store.file_record(digest)
            if record is None and any(d == digest for _, d, _ in pending):
                record = {}  # the same bytes twice in one run: the second copy is a re-ingest
            if record is not None:
                _flush(store, pending, report, max_abs_quantity, progress)
                pending, pending_rows = [], 0
                record = record or store.file_record(digest) or {}
                report.add(
                    FileReport(
                        path=str(path),
                        sha256=digest,
                        status="already_ingested",
                        rows_in=record.get("rows_in", 0),
                        rows_written=0,
                        quarantined=record.get("quarantined", 0),
                        classes=record.get("classes", {c: 0 for c in LINE_CLASSES}),
                        encoding=record.get("encoding", ""),
                        delimiter=record.get("delimiter", ""),
                    )
                )
                if progress:
                    progress(1)
                continue
            raw = read_raw(path)
            pending.append((path, digest, raw))
            pending_rows += raw.rows
            if pending_rows >= batch_rows:
                _flush(store, pending, report, max_abs_quantity, progress)
                pending, pending_rows = [], 0
        _flush(store, pending, report, max_abs_quantity, progress)
    return report


def _flush(
    store: OrderStore,
    pending: list[tuple[Path, str, RawFrame]],
    report: IngestReport,
    max_abs_quantity: int,
    progress: Callable[[int], None] | None,
) -> None:
    if not pending:
        return
    # Two files of one batch can share a name; classify under a unique key, report the real path.
    keyed = []
    for k, (path, _digest, raw) in enumerate(pending):
        key = f"{k}\x1f{path.name}"
        frame = raw.frame.set_column(
            raw.frame.schema.get_field_index("source_file"), "source_file", pa.array([key] * raw.frame.num_rows, pa.string())
        )
        broken = raw.broken.assign(source_file=key)
        keyed.append(RawFrame(frame, broken, raw.encoding, raw.delimiter))
    result = classify(RawFrame.concat(keyed), max_abs_quantity=max_abs_quantity)
    canon_by_file = dict(tuple(result.canonical.groupby("source_file", sort=False)))
    quar_by_file = dict(tuple(result.quarantine.groupby("source_file", sort=False)))
    empty_canon = result.canonical.iloc[0:0]
    empty_quar = result.quarantine.iloc[0:0]
    for k, (path, digest, raw) in enumerate(pending):
        key = f"{k}\x1f{path.name}"
        canon = canon_by_file.get(key, empty_canon).assign(source_file=path.name)
        quarantine = quar_by_file.get(key, empty_quar).assign(source_file=path.name)
        if len(canon):
            # The same order lines can arrive again in a later, differently named export.
            # a day either side: another system's clock or time zone can put the same line on the next day
            days = np.unique(_days(canon["invoice_ts"]).astype("datetime64[D]"))
            known = store.existing_line_ids({str(d + k) for d in days for k in (-1, 0, 1)})
            if known:
                canon = canon[~canon["line_id"].isin(known)]
        fr = FileReport(
            path=str(path),
            sha256=digest,
            status="ingested",
            rows_in=raw.rows,
            rows_written=len(canon),
            quarantined=len(quarantine),
            classes=result.classes.get(key, {c: 0 for c in LINE_CLASSES}),
            encoding=raw.encoding,
            delimiter=raw.delimiter,
        )
        store.commit_file(digest, path, canon, quarantine, fr)
        report.add(fr)
        crash_point("ingest")  # a file committed, the next ones not yet
        if progress:
            progress(1)


def read_quarantine(data_dir: Path) -> pd.DataFrame:
    """Every rejected row with its reason, as committed."""
    parts = OrderStore(data_dir).committed_parts("quarantine")
    if not parts:
        return QUARANTINE_SCHEMA.empty_table().to_pandas()
    return pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)
