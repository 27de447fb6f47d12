"""Order lines for training and evaluation, read from the committed canonical Parquet.

Labels, baselines and evaluation read the valid purchases of :data:`patron.rules.VALID_PURCHASE_SQL`,
so that every model and baseline is scored on exactly the same ground truth.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from patron import duck
from patron.errors import PatronError
from patron.features.ingest import DATE_FORMATS, OrderStore
from patron.rules import VALID_PURCHASE_SQL
from patron.times import to_utc


class NoOrdersError(PatronError):
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
    lines = OrderStore(data_dir).scan()
    if lines is None:
        raise NoOrdersError(f"no order lines under {data_dir}: run `patron ingest` first")
    where = [VALID_PURCHASE_SQL] if valid_only else []
    params: dict = {}
    if start is not None:
        where.append("invoice_ts >= $start")
        params["start"] = to_utc(start)
    if end is not None:
        where.append("invoice_ts < $end")
        params["end"] = to_utc(end)
    sql = f"SELECT {', '.join(columns)} FROM {lines}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY invoice_ts, invoice_no"
    with duck.connect() as con:
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
    with duck.connect() as con:
        lines = store.scan("order_lines")
        if lines is not None:
            rows = con.execute(
                f"SELECT DISTINCT customer_id FROM {lines} WHERE customer_id IS NOT NULL AND invoice_ts < $end",
                {"end": end_ts},
            ).fetchall()
            ids.update(int(r[0]) for r in rows)
        quarantine = store.scan("quarantine")
        if quarantine is not None:
            rows = con.execute(
                f"""SELECT DISTINCT TRY_CAST(TRY_CAST(trim(CustomerID) AS DOUBLE) AS BIGINT) AS c
                    FROM {quarantine}
                    WHERE coalesce(try_strptime(trim(InvoiceDate), $formats), TIMESTAMP '9999-01-01') < $end""",
                {"formats": list(DATE_FORMATS), "end": end_ts.replace(tzinfo=None)},
            ).fetchall()
            ids.update(int(r[0]) for r in rows if r[0] is not None and r[0] > 0)
    return np.array(sorted(ids), dtype=np.int64)
