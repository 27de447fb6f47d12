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

from patron.features.ingest.classify import LINE_IDENTITY, classify
from patron.features.ingest.ledger import OrderStore, read_quarantine
from patron.features.ingest.read import RawFrame, find_files, read_header, read_raw, validate_header
from patron.features.ingest.run import ingest
from patron.features.ingest.schema import (
    CANONICAL_SCHEMA,
    DATE_FORMATS,
    OPTIONAL_COLUMNS,
    QUARANTINE_SCHEMA,
    RAW_COLUMNS,
    SUFFIXES,
    FileReport,
    IngestError,
    IngestReport,
    SchemaError,
    UnreadableFileError,
)

__all__ = [
    "CANONICAL_SCHEMA", "DATE_FORMATS", "LINE_IDENTITY", "OPTIONAL_COLUMNS", "QUARANTINE_SCHEMA", "RAW_COLUMNS", "SUFFIXES",
    "FileReport", "IngestError", "IngestReport", "OrderStore", "RawFrame", "SchemaError", "UnreadableFileError",
    "classify", "find_files", "ingest", "read_header", "read_quarantine", "read_raw", "validate_header",
]
