"""What ingestion reads and writes: the raw export columns, the canonical and quarantine schemas,
its errors and its reports."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from patron.errors import PatronError
from patron.rules import LINE_CLASSES

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
FORMULA_RE = re.compile(r"^[=+@\t\r]|^-[^0-9.\s]")
DATE_FORMATS: tuple[str, ...] = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M:%S",
    "%m/%d/%Y %H:%M",
)
DELIMITERS = (",", ";", "\t", "|")

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


class IngestError(PatronError):
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
