"""Reading raw export files (CSV, gzip CSV, Parquet) into text columns, refusing whole files whose
header, encoding or ending cannot be trusted, and keeping rows that cannot be split with a reason."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from patron.features.ingest.schema import (
    DELIMITERS,
    OPTIONAL_COLUMNS,
    RAW_COLUMNS,
    SUFFIXES,
    IngestError,
    SchemaError,
    UnreadableFileError,
)


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


def decode(data: bytes) -> tuple[str, str]:
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


def check_header(header: Sequence[str], path: Path) -> None:
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
    refuse_binary(first, path)
    text, _ = decode(first)
    line = text.split("\n", 1)[0].rstrip("\r")
    delim = max(DELIMITERS, key=line.count)
    return next(csv.reader([line], delimiter=delim))


def validate_header(path: Path) -> None:
    check_header(read_header(path), path)


def read_raw(path: Path) -> RawFrame:
    if path.name.endswith(".parquet"):
        return _read_parquet(path)
    return _read_csv(path)


def _read_parquet(path: Path) -> RawFrame:
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise UnreadableFileError(f"{path}: not a readable Parquet file ({exc}); nothing from it was stored") from exc
    check_header(table.column_names, path)
    n = table.num_rows
    columns = {c: pc.fill_null(table.column(c).cast(pa.string()), "") for c in table.column_names if c in RAW_COLUMNS}
    frame = _raw_table(_in_raw_order(columns, n), path.name, np.arange(1, n + 1))
    return RawFrame(frame, _broken_frame(path.name, []), "parquet", "")


def refuse_binary(head: bytes, path: Path) -> None:
    if b"\x00" in head and not head.startswith(_UTF16_BOMS):
        raise UnreadableFileError(f"{path}: holds NUL bytes, so it is not CSV text (a binary or mis-encoded file); nothing from it was stored")


def _read_csv(path: Path) -> RawFrame:
    data = _read_bytes(path)
    refuse_binary(data[: 1 << 16], path)
    text, encoding = decode(data)
    if not text.strip():
        raise SchemaError(f"{path}: empty file; expected a header line with {', '.join(RAW_COLUMNS)}")
    first_line = text.split("\n", 1)[0].rstrip("\r")
    delimiter = max(DELIMITERS, key=first_line.count)
    split = split_regular(text, delimiter) or split_rows(text, delimiter)
    if split.header is None:
        raise SchemaError(f"{path}: no header line; expected {', '.join(RAW_COLUMNS)}")
    check_header(split.header, path)
    if split.truncated:
        # The last line has no line end and the wrong number of fields: the file was cut off.
        raise UnreadableFileError(
            f"{path}: looks truncated (line {split.broken[-1][0]} is incomplete and has no line end); nothing from it was stored"
        )
    columns = dict(zip((h.strip() for h in split.header), split.columns))
    frame = _raw_table(_in_raw_order(columns, len(split.lines)), path.name, split.lines)
    return RawFrame(frame, _broken_frame(path.name, split.broken), encoding, delimiter)


# A single absurdly long field must not stop the file: what one field may hold; the row that
# exceeds it is quarantined.
FIELD_LIMIT = 1 << 20


@dataclass
class Split:
    """A CSV text cut into its header and rows: one text column per header field, each row's line
    number (where it ends), and the rows that could not be split (line, text, reason)."""

    header: list[str] | None
    columns: list[pa.Array]
    lines: np.ndarray
    broken: list[tuple[int, str, str]]
    truncated: bool = False


def split_rows(text: str, delimiter: str) -> Split:
    """Row by row (Python's csv module, not strict): a row whose field count differs from the
    header's, or that cannot be read, is kept aside with its reason; blank lines are skipped."""
    truncated_tail = not text.endswith(("\n", "\r"))
    width = 0
    rows: list[list[str]] = []
    lines: list[int] = []
    broken: list[tuple[int, str, str]] = []
    csv.field_size_limit(FIELD_LIMIT)
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
            width = len(header)
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line, not a row
        if len(row) != width:
            broken.append(
                (reader.line_num, delimiter.join(row)[:10_000], f"expected {width} fields separated by {delimiter!r}, got {len(row)}")
            )
            continue
        rows.append(row)
        lines.append(reader.line_num)
    columns = [pa.array(col, pa.string()) for col in zip(*rows)] if rows else [pa.array([], pa.string())] * width
    truncated = truncated_tail and bool(broken) and broken[-1][0] == reader.line_num
    return Split(header, columns, np.asarray(lines, dtype=np.int64), broken, truncated)


def split_regular(text: str, delimiter: str) -> Split | None:
    """:func:`split_rows` by Arrow's CSV parser, many times faster, for a text where it gives the
    same answer: every record one line of the header's width, no blank line, no NUL, no field near
    the limit. None for any other text (the caller then splits it row by row)."""
    body = text.rstrip("\r\n")  # what comes before the blank lines at the end, if any
    first = body.split("\n", 1)[0].split("\r", 1)[0]
    if "\x00" in body or first.count('"') % 2:
        return None  # a NUL, or a header that may run over several lines
    width = len(next(csv.reader([first], delimiter=delimiter), []))
    if width < 2:
        return None  # with one field, a line of blanks is a row here and skipped row by row
    # Python's csv module ends a line at \n, \r\n or a lone \r
    physical = body.count("\n") + body.count("\r") - body.count("\r\n") + 1
    try:
        table = pa_csv.read_csv(
            pa.py_buffer(text.encode("utf-8")),
            read_options=pa_csv.ReadOptions(autogenerate_column_names=True, block_size=1 << 24),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter, double_quote=True, escape_char=False,
                                              newlines_in_values=True, ignore_empty_lines=True),
            convert_options=pa_csv.ConvertOptions(column_types={f"f{i}": pa.string() for i in range(width)},
                                                  strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, ValueError):
        return None  # a row of another width, a blank line, a quote left open: row by row
    # one record per line: a quoted line break or a blank line before the last row would lower
    # the count (blank lines are skipped by both, but their line numbers would shift)
    if table.num_rows != physical or table.num_columns != width:
        return None
    columns = [table.column(i).combine_chunks() for i in range(width)]
    if any((pc.max(pc.utf8_length(c)).as_py() or 0) >= FIELD_LIMIT - 1 for c in columns):
        return None
    if any(ch in c[-1].as_py() for c in columns for ch in "\r\n"):
        return None  # a quote left open in the last row took the blank lines after it
    header = [c[0].as_py() for c in columns]
    return Split(header, [c[1:] for c in columns], np.arange(2, physical + 1, dtype=np.int64), [])


def _in_raw_order(columns: dict[str, pa.Array | pa.ChunkedArray], n: int) -> list[pa.Array | pa.ChunkedArray]:
    """The file's columns in RAW_COLUMNS order; an optional column the file does not have is read as empty."""
    empty = pa.array([""] * n, pa.string())
    return [columns.get(c, empty) for c in RAW_COLUMNS]


def _raw_table(columns: Sequence[pa.Array | pa.ChunkedArray], source_file: str, lines: np.ndarray) -> pa.Table:
    n = len(lines)
    return pa.table(
        list(columns) + [pa.array([source_file] * n, pa.string()), pa.array(lines, pa.int64())],
        names=[*RAW_COLUMNS, "source_file", "source_line"],
    )
