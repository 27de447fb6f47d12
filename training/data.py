"""Order lines for training and evaluation, read from the committed canonical Parquet.

One definition of a "valid purchase" is shared by labels, baselines and evaluation, so that every
model and baseline is scored on exactly the same ground truth: a known customer, quantity > 0,
unit price > 0, not a cancellation. Service lines (postage and the like) that a customer paid for
count as purchases here, as they do in the shop's revenue.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from patron.features.compute import to_utc
from patron.features.ingest import DATE_FORMATS, OrderStore

VALID_PURCHASE_SQL = (
    "customer_id IS NOT NULL AND quantity > 0 AND unit_price > 0 "
    "AND NOT starts_with(invoice_no, 'C') AND line_class IN ('sale', 'non_product')"
)


class NoOrdersError(Exception):
    """No committed order lines match the request."""


def load_lines(
    data_dir: Path,
    *,
    start: dt.date | dt.datetime | None = None,
    end: dt.date | dt.datetime | None = None,
    valid_only: bool = True,
    columns: Sequence[str] = (
        "customer_id",
        "invoice_no",
        "item_id",
        "quantity",
        "unit_price",
        "amount",
        "invoice_ts",
        "line_class",
    ),
) -> pd.DataFrame:
    """Order lines with ``start <= invoice_ts < end`` (either bound optional), oldest first."""
    parts = OrderStore(data_dir).committed_parts("order_lines")
    if not parts:
        raise NoOrdersError(f"no order lines under {data_dir}: run `patron ingest` first")
    where = [VALID_PURCHASE_SQL] if valid_only else []
    params: dict = {}
    if start is not None:
        where.append("invoice_ts >= $start")
        params["start"] = to_utc(start)
    if end is not None:
        where.append("invoice_ts < $end")
        params["end"] = to_utc(end)
    files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in parts)
    sql = f"SELECT {', '.join(columns)} FROM read_parquet([{files}])"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY invoice_ts, invoice_no"
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        df = con.execute(sql, params).df()
    if "customer_id" in df.columns and valid_only:
        df["customer_id"] = df["customer_id"].astype("int64")
    return df


def window_outcomes(lines: pd.DataFrame, start: dt.datetime, horizon_days: int) -> pd.DataFrame:
    """Per customer: spend and number of orders within [start, start + horizon)."""
    start = to_utc(start)
    end = start + dt.timedelta(days=horizon_days)
    w = lines[(lines["invoice_ts"] >= start) & (lines["invoice_ts"] < end)]
    out = w.groupby("customer_id").agg(spend=("amount", "sum"), orders=("invoice_no", "nunique"))
    return out


def known_customers(data_dir: Path, end: dt.date | dt.datetime) -> np.ndarray:
    """Every customer id the shop's exports name before ``end``: those with valid purchases, but also
    those whose only lines were returns or were quarantined (say, a 74,215-unit order cancelled
    minutes later). The CRM knows them too, so batch exports list them, scored as customers
    without a usable history."""
    store = OrderStore(data_dir)
    ids: set[int] = set()
    end_ts = to_utc(end)
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        parts = store.committed_parts("order_lines")
        if parts:
            files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in parts)
            rows = con.execute(
                f"SELECT DISTINCT customer_id FROM read_parquet([{files}]) WHERE customer_id IS NOT NULL AND invoice_ts < $end",
                {"end": end_ts},
            ).fetchall()
            ids.update(int(r[0]) for r in rows)
        parts = store.committed_parts("quarantine")
        if parts:
            files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in parts)
            rows = con.execute(
                f"""SELECT DISTINCT TRY_CAST(TRY_CAST(trim(CustomerID) AS DOUBLE) AS BIGINT) AS c
                    FROM read_parquet([{files}])
                    WHERE coalesce(try_strptime(trim(InvoiceDate), $formats), TIMESTAMP '9999-01-01') < $end""",
                {"formats": list(DATE_FORMATS), "end": end_ts.replace(tzinfo=None)},
            ).fetchall()
            ids.update(int(r[0]) for r in rows if r[0] is not None and r[0] > 0)
    return np.array(sorted(ids), dtype=np.int64)
