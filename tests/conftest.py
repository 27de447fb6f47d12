"""Shared fixtures: tiny raw exports with known answers, written in the shop's own format."""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

# scikit-learn's OpenMP threads spin-wait for each other; on a 2-core machine that is also running
# the test process (and maybe a server) they can slow tree fitting down thirty-fold. One thread
# per estimator keeps the suite fast and its timings stable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

HEADER = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]
REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "data" / "online-retail" / "daily"
SHARED = REPO.parent / "shared" / "data" / "online-retail" / "daily"


def write_raw(path: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    """Write rows in the raw export format (.csv or .csv.gz by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header or HEADER)
        w.writerows(rows)
    return path


def line(inv: str, code: str, qty: int | str, ts: str, price: float | str, cust: str = "17850.0",
         desc: str = "WHITE HANGING HEART T-LIGHT HOLDER", country: str = "United Kingdom") -> list[str]:
    return [inv, code, desc, str(qty), ts, str(price), cust, country]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def redis_url() -> str:
    return os.environ.get("PATRON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
