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
from dataclasses import dataclass

import numpy as np
import pandas as pd

from patron.errors import PatronError
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


def population(lines: pd.DataFrame, t: dt.datetime) -> np.ndarray:
    """Customers with a valid purchase strictly before t."""
    return np.sort(lines.loc[lines["invoice_ts"] < to_utc(t), "customer_id"].unique())


def labels(lines: pd.DataFrame, customers: np.ndarray, t: dt.datetime, horizon_days: int) -> pd.DataFrame:
    """churned (no purchase in the window), spend and orders in [t, t + horizon) per customer."""
    t = to_utc(t)
    end = t + dt.timedelta(days=horizon_days)
    w = lines[(lines["invoice_ts"] >= t) & (lines["invoice_ts"] < end)]
    agg = w.groupby("customer_id").agg(spend=("amount", "sum"), orders=("invoice_no", "nunique"))
    out = pd.DataFrame(index=pd.Index(customers, name="customer_id"))
    out = out.join(agg).fillna({"spend": 0.0, "orders": 0})
    out["orders"] = out["orders"].astype(np.int64)
    out["churned"] = (out["orders"] == 0).astype(np.int64)
    return out


def past_window_spend(lines: pd.DataFrame, customers: np.ndarray, t: dt.datetime, horizon_days: int) -> pd.Series:
    """Spend in the horizon-long window before t: the 'past spend' baseline for LTV."""
    t = to_utc(t)
    w = lines[(lines["invoice_ts"] >= t - dt.timedelta(days=horizon_days)) & (lines["invoice_ts"] < t)]
    return w.groupby("customer_id")["amount"].sum().reindex(customers).fillna(0.0)


def build_frame(
    store,  # feast.FeatureStore; untyped here so that importing this module stays light
    lines: pd.DataFrame,
    snapshots: list[dt.datetime],
    horizon_days: int,
    service: str,
    *,
    with_labels: bool = True,
) -> pd.DataFrame:
    """One row per (customer, snapshot): Feast features of ``service``, past spend, labels."""
    from patron.features.store import historical_features

    pieces = []
    entity_rows = []
    for t in snapshots:
        customers = population(lines, t)
        if len(customers) == 0:
            continue
        entity_rows.append(pd.DataFrame({"customer_id": customers, "event_timestamp": pd.Timestamp(to_utc(t))}))
        extra = past_window_spend(lines, customers, t, horizon_days).rename("past_spend").to_frame()
        if with_labels:
            extra = extra.join(labels(lines, customers, t, horizon_days))
        extra["event_timestamp"] = pd.Timestamp(to_utc(t))
        pieces.append(extra.reset_index())
    if not entity_rows:
        raise TooLittleHistoryError("no customer has bought before any of the snapshot dates")
    entity_df = pd.concat(entity_rows, ignore_index=True)
    feats = historical_features(store, entity_df, service)
    feats["event_timestamp"] = pd.to_datetime(feats["event_timestamp"], utc=True)
    frame = pd.concat(pieces, ignore_index=True).merge(feats, on=["customer_id", "event_timestamp"], how="left")
    lost = int(frame["frequency"].isna().sum())
    if lost:
        # Missing features are allowed (the trees treat them as unknown) but should be rare.
        log.warning("%d of %d customer-snapshots have no features in %s", lost, len(frame), service)
    return frame.rename(columns={"event_timestamp": "snapshot"}).sort_values(["snapshot", "customer_id"]).reset_index(drop=True)
