"""Labelled training frames for the customer models (churn, LTV).

A frame is one row per (customer, snapshot T): features as of T from Feast's point-in-time join
(the model's feature service) and labels from the window [T, T + horizon). No label window may
cross ``as_of``: the latest snapshot is the largest grid date T with T + horizon <= as_of, and it
is kept as the holdout on which models are compared; earlier snapshots train.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from patron import sampling
from patron.errors import PatronError
from patron.rules import VALID_PURCHASE_SQL
from patron.times import to_utc

log = logging.getLogger(__name__)


class TooLittleHistoryError(PatronError):
    """No labelled snapshot fits between the first order and ``as_of``."""


@dataclass(frozen=True)
class SnapshotPlan:
    as_of: dt.datetime
    horizon_days: int
    holdout: dt.datetime
    train: list[dt.datetime]

    @property
    def all(self) -> list[dt.datetime]:
        return sorted([*self.train, self.holdout])


def plan_snapshots(
    first_order: dt.datetime,
    as_of: dt.date | dt.datetime,
    horizon_days: int,
    *,
    every_days: int = 7,
    spacing: int = 1,
    max_train: int = 26,
    min_history_days: int = 28,
) -> SnapshotPlan:
    """Snapshot dates on the feature grid (as_of - k * every_days) whose label windows end by as_of.

    Every grid step trains (``spacing`` 1), back to ``min_history_days`` after the first order:
    consecutive weeks repeat many customers, but each adds the ones whose recency crossed a
    threshold that week, and labelled data is what a young shop lacks most.
    """
    if horizon_days < 1:
        raise ValueError(f"horizon must be at least 1 day, got {horizon_days}")
    as_of = to_utc(as_of)
    first_order = to_utc(first_order)
    steps = math.ceil(horizon_days / every_days)
    holdout = as_of - dt.timedelta(days=steps * every_days)
    earliest = first_order + dt.timedelta(days=min_history_days)
    if holdout < earliest:
        raise TooLittleHistoryError(
            f"a {horizon_days}-day label window needs orders from at least "
            f"{(earliest - first_order).days + steps * every_days} days before {as_of.date()}; "
            f"the first order is on {first_order.date()}"
        )
    train = []
    t = holdout - dt.timedelta(days=spacing * every_days)
    while t >= earliest and len(train) < max_train:
        train.append(t)
        t -= dt.timedelta(days=spacing * every_days)
    if not train:
        raise TooLittleHistoryError(
            f"only one labelled snapshot ({holdout.date()}) fits before {as_of.date()}: it is needed as the holdout, "
            "none is left to train on"
        )
    return SnapshotPlan(as_of=as_of, horizon_days=horizon_days, holdout=holdout, train=sorted(train))


# the population and its orders, shared by the count before sampling and the frame itself
POPULATION_SQL = """
WITH
-- one row per order (invoice and moment) of a known customer
orders AS (
    SELECT customer_id::BIGINT AS customer_id, invoice_no, invoice_ts AS ts, sum(amount) AS spend
    FROM lines
    WHERE customer_id IS NOT NULL AND invoice_ts < $end
    GROUP BY ALL
),
snap AS (SELECT unnest($snapshots::TIMESTAMPTZ[]) AS t),
-- the population of snapshot t: customers with a valid purchase strictly before t
pop AS (
    SELECT f.customer_id, s.t
    FROM (SELECT customer_id, min(ts) AS first_ts FROM orders GROUP BY customer_id) f
    JOIN snap s ON f.first_ts < s.t
    WHERE {sample}
)"""

WINDOW_SQL = POPULATION_SQL + """,
-- past spend over [t - horizon, t), and the labels over [t, t + horizon)
win AS (
    SELECT o.customer_id, s.t,
           sum(o.spend) FILTER (WHERE o.ts < s.t) AS past_spend,
           sum(o.spend) FILTER (WHERE o.ts >= s.t) AS spend,
           count(DISTINCT o.invoice_no) FILTER (WHERE o.ts >= s.t) AS orders
    FROM orders o
    JOIN snap s ON o.ts >= s.t - to_days($horizon) AND o.ts < s.t + to_days($horizon)
    GROUP BY ALL
)
SELECT p.customer_id, p.t AS event_timestamp,
       coalesce(w.past_spend, 0)::DOUBLE AS past_spend,
       coalesce(w.spend, 0)::DOUBLE AS spend,
       coalesce(w.orders, 0)::BIGINT AS orders,
       (coalesce(w.orders, 0) = 0)::BIGINT AS churned
FROM pop p LEFT JOIN win w ON w.customer_id = p.customer_id AND w.t = p.t
ORDER BY event_timestamp, customer_id
"""


@dataclass(frozen=True)
class Windows:
    """Per (customer, snapshot): past spend and, for labelled snapshots, what happened next."""

    frame: pd.DataFrame  # customer_id, event_timestamp, past_spend, spend, orders, churned
    fraction: float  # the share of customers kept (1.0: all of them)
    population_rows: int  # (customer, snapshot) rows before sampling


def _lines_view(con, lines) -> None:
    """``lines``: the valid purchases, from the committed Parquet of a data folder or from a frame of
    valid purchases (as :func:`patron.training.data.load_lines` gives them)."""
    if isinstance(lines, pd.DataFrame):
        con.register("given_lines", lines[["customer_id", "invoice_no", "invoice_ts", "amount"]])
        con.execute("CREATE OR REPLACE TEMP VIEW lines AS SELECT * FROM given_lines")
        return
    from patron.features.ingest import OrderStore

    scan = OrderStore(Path(lines)).scan()
    if scan is None:
        raise TooLittleHistoryError(f"no order lines under {lines}: run `patron ingest` first")
    con.execute(f"CREATE OR REPLACE TEMP VIEW lines AS SELECT customer_id, invoice_no, invoice_ts, amount "
                f"FROM {scan} WHERE {VALID_PURCHASE_SQL}")


def windows(
    lines,
    snapshots: Sequence[dt.datetime],
    horizon_days: int,
    *,
    end: dt.datetime | None = None,
    max_rows: int | None = None,
    seed: int = 0,
    memory_limit: str | None = None,
) -> Windows:
    """Population, past spend and labels of every snapshot, computed by DuckDB in one pass over the
    orders (out of core past ``memory_limit``). Lines at or after ``end`` are not read.

    With ``max_rows``, whole customers are sampled (all their snapshots or none) so that the rows
    stay within it: a customer's later snapshots are never in training while their earlier ones
    are left out, and the share kept is the same in every snapshot.
    """
    from patron import duck

    if horizon_days < 1:
        raise ValueError(f"horizon must be at least 1 day, got {horizon_days}")
    snaps = sorted(to_utc(t) for t in snapshots)
    end = to_utc(end) if end is not None else snaps[-1] + dt.timedelta(days=horizon_days)
    memory_limit = memory_limit or duck.memory_limit()
    with tempfile.TemporaryDirectory(prefix="patron-frames-") as tmp, \
            duck.connect(memory_limit=memory_limit, temp_dir=Path(tmp)) as con, \
            duck.within_memory(f"the labels of {len(snaps)} snapshots", memory_limit):
        _lines_view(con, lines)
        params = {"end": end, "snapshots": snaps, "horizon": int(horizon_days)}
        total = con.execute(POPULATION_SQL.replace("{sample}", "true") + " SELECT count(*) FROM pop",
                            {"end": end, "snapshots": snaps}).fetchone()[0]
        fraction = 1.0 if not max_rows or total <= max_rows else max_rows / total
        sql = WINDOW_SQL.replace("{sample}", "true" if fraction >= 1.0 else sampling.SAMPLE_SQL)
        if fraction < 1.0:
            params |= sampling.sql_params(fraction, seed)
        frame = con.execute(sql, params).df()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return Windows(frame, fraction, int(total))


def build_frame(
    store,  # feast.FeatureStore; untyped here so that importing this module stays light
    lines,
    snapshots: list[dt.datetime],
    horizon_days: int,
    service: str,
    *,
    with_labels: bool = True,
    end: dt.datetime | None = None,
    max_rows: int | None = None,
    seed: int = 0,
) -> tuple[pd.DataFrame, Windows]:
    """One row per (customer, snapshot): Feast features of ``service``, past spend, labels.

    ``lines`` is a data folder (or a frame of valid purchases); the features come from Feast's
    point-in-time join, the rest from :func:`windows`.
    """
    from patron.features.store import historical_features

    w = windows(lines, snapshots, horizon_days, end=end, max_rows=max_rows, seed=seed)
    extra = w.frame
    if extra.empty:
        raise TooLittleHistoryError("no customer has bought before any of the snapshot dates")
    if not with_labels:
        extra = extra[["customer_id", "event_timestamp", "past_spend"]]
    feats = historical_features(store, extra[["customer_id", "event_timestamp"]], service)
    feats["event_timestamp"] = pd.to_datetime(feats["event_timestamp"], utc=True)
    frame = extra.merge(feats, on=["customer_id", "event_timestamp"], how="left")
    lost = int(frame["frequency"].isna().sum())
    if lost:
        # Missing features are allowed (the trees treat them as unknown) but should be rare.
        log.warning("%d of %d customer-snapshots have no features in %s", lost, len(frame), service)
    frame = frame.rename(columns={"event_timestamp": "snapshot"}).sort_values(["snapshot", "customer_id"])
    return frame.reset_index(drop=True), w
