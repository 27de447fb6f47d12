"""A customer's online state built from their events, pushed through Feast, read back (:class:`Fresh`)
and applied on top of the snapshot features."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from patron.features.events.schema import MAX_BASKET, MAX_PURCHASES, PUSH_SOURCE, order_key

if TYPE_CHECKING:
    from patron.features.events.log import EventLog


# ----------------------------------------------------------------------------- online state

STATE_COLUMNS = ("customer_id", "event_timestamp", "purchase_ts", "purchase_items", "purchase_amounts", "purchase_orders",
                 "basket_items", "last_event_ts", "updated_at")


def customer_state(customer_id: int, events: Sequence[tuple]) -> dict[str, Any]:
    """A customer's online state from their events (newest first), as the push source's row."""
    p_ts: list[int] = []
    p_items: list[str] = []
    p_amounts: list[float] = []
    p_orders: list[str] = []
    basket: list[str] = []
    for kind, item, qty, price, order_id, ts, _received, session, event_id in events:
        if kind == "purchase":
            if len(p_ts) < MAX_PURCHASES:
                p_ts.append(int(ts))
                p_items.append(item)
                p_amounts.append(round(float(qty) * float(price), 4))
                p_orders.append(order_key(order_id, customer_id, session or None, ts, event_id))
        elif kind == "add_to_cart" and not p_ts and item not in basket and len(basket) < MAX_BASKET:
            basket.append(item)  # newer than the last purchase (events come newest first)
    return {
        "customer_id": int(customer_id),
        "event_timestamp": pd.Timestamp.now(tz="UTC"),
        "purchase_ts": p_ts,
        "purchase_items": p_items,
        "purchase_amounts": p_amounts,
        "purchase_orders": p_orders,
        "basket_items": basket,
        "last_event_ts": int(max((e[5] for e in events), default=0)),
        "updated_at": float(max((e[6] for e in events), default=0.0)),
    }


def state_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({c: [] for c in STATE_COLUMNS})
    return pd.DataFrame(rows, columns=list(STATE_COLUMNS))


def publish(store, event_log: "EventLog", customers: Iterable[int] | None = None) -> int:
    """Push the state of dirty customers into the online store; returns how many were pushed."""
    from feast.data_source import PushMode

    with event_log.publishing(customers) as (frame, marks):
        if len(frame):
            store.push(PUSH_SOURCE, frame, to=PushMode.ONLINE)
    return len(marks)


# ------------------------------------------------------------------------------ fresh state


@dataclass(frozen=True)
class Fresh:
    """A customer's events as read back from the online store."""

    purchase_ts: np.ndarray  # epoch seconds, newest first
    purchase_items: list[str]
    purchase_amounts: np.ndarray
    purchase_orders: list[str]
    basket_items: list[str]
    last_event_ts: float
    updated_at: float

    def purchases_after(self, t: float) -> np.ndarray:
        return np.flatnonzero(self.purchase_ts > t)

    def items_bought_after(self, t: float) -> list[str]:
        return list(dict.fromkeys(self.purchase_items[i] for i in self.purchases_after(t)))


DAY = 86400.0


def apply_purchases(frame: pd.DataFrame, snapshot_ts: np.ndarray, fresh: Sequence[Fresh | None]) -> tuple[pd.DataFrame, np.ndarray]:
    """Bring snapshot features up to date with the purchases made after each row's snapshot.

    The reference time of an updated row moves from its snapshot to its newest purchase, so
    recency is 0, tenure and the BG/NBD age grow by the gap, and counts and spend take in the new
    orders. Windowed counts (orders in 30/90 days) only add: orders that left the window during
    the gap (days, until the next snapshot) are not taken out. Returns the new frame and the
    reference time of each row.
    """
    out = frame.copy()
    ref = np.asarray(snapshot_ts, float).copy()
    for i, f in enumerate(fresh):
        if f is None:
            continue
        new = f.purchases_after(snapshot_ts[i])
        if not len(new):
            continue
        t_last = float(f.purchase_ts[new].max())
        gap = max(0.0, (t_last - snapshot_ts[i]) / DAY)
        orders: dict[str, float] = {}
        order_day: dict[str, int] = {}
        for j in new:
            key = f.purchase_orders[j]
            orders[key] = orders.get(key, 0.0) + float(f.purchase_amounts[j])
            order_day[key] = int(f.purchase_ts[j] // DAY)
        n, spend = len(orders), float(sum(orders.values()))
        r = out.iloc[i]

        def v(col: str) -> float:  # a snapshot value, 0 where the snapshot has none
            return 0.0 if pd.isna(r[col]) else float(r[col])

        last_day = {int((snapshot_ts[i] - r["recency_days"] * DAY) // DAY)} if pd.notna(r["recency_days"]) else set()
        new_days = len(set(order_day.values()) - last_day)
        freq, total, days = v("frequency") + n, v("monetary_total") + spend, v("purchase_days") + new_days
        updates = {
            "recency_days": 0.0,
            "frequency": freq,
            "monetary_total": total,
            "avg_order_value": total / freq,
            "tenure_days": v("tenure_days") + gap,
            "orders_30d": v("orders_30d") + n,
            "orders_90d": v("orders_90d") + n,
            "spend_90d": v("spend_90d") + spend,
            "spend_365d": v("spend_365d") + spend,
            "purchase_days": days,
            "btyd_frequency": max(0.0, days - 1),
            "btyd_age_days": v("btyd_age_days") + gap,
            "btyd_recency_days": v("btyd_age_days") + gap,  # the newest purchase ends the history
            "decayed_orders_30": v("decayed_orders_30") * math.exp(-gap / 30) + n,
            "decayed_orders_90": v("decayed_orders_90") * math.exp(-gap / 90) + n,
            "active_weeks_13": min(13.0, v("active_weeks_13") + 1),
            "active_weeks_26": min(26.0, v("active_weeks_26") + 1),
        }
        if freq > 1 and pd.notna(r["tenure_days"]):
            updates["mean_interorder_days"] = (v("tenure_days") + gap) / (freq - 1)  # first to last order
        if new_days and days > 1 and pd.notna(r["btyd_monetary"]):
            repeat_before = max(0.0, v("purchase_days") - 1)
            updates["btyd_monetary"] = (v("btyd_monetary") * repeat_before + spend) / (repeat_before + new_days)
        if "orders_prev_90d" in out.columns:
            o90, p90 = updates["orders_90d"], v("orders_prev_90d")
            updates["activity_trend"] = 0.0 if o90 + p90 == 0 else (o90 - p90) / (o90 + p90)
        for col, v in updates.items():
            if col in out.columns:
                out.iat[i, out.columns.get_loc(col)] = v
        ref[i] = max(ref[i], t_last)
    return out, ref
