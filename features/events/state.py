"""A customer's online state built from their events, pushed through Feast, read back (:class:`Fresh`)
and applied on top of the snapshot features."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from patron.features.events.schema import MAX_BASKET, MAX_ORDERS, MAX_PURCHASES, PUSH_SOURCE, order_key

if TYPE_CHECKING:
    from patron.features.events.log import EventLog


# ----------------------------------------------------------------------------- online state

STATE_COLUMNS = ("customer_id", "event_timestamp", "purchase_ts", "purchase_items", "purchase_amounts", "purchase_orders",
                 "basket_items", "last_event_ts", "updated_at", "order_ts", "order_keys", "order_amounts", "orders_cut_at")


def customer_state(customer_id: int, events: Sequence[tuple], orders: Sequence[tuple] = ()) -> dict[str, Any]:
    """A customer's online state, as the push source's row: from their newest events (newest first)
    the latest purchase lines and the basket; from ``orders`` (every purchase order, newest first,
    see EventLog._orders_of) each order's time and amount, so that counts and spend take in every
    purchase, and where the list stops when a customer has more than MAX_ORDERS."""
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
    kept = orders[:MAX_ORDERS]
    cut_at = int(kept[-1][2]) if len(orders) > MAX_ORDERS else 0  # orders before this are not in the state
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
        "order_ts": [int(newest) for _, _, newest, _ in kept],
        "order_keys": [order_key(oid, customer_id, None, second, "") for oid, second, _, _ in kept],
        "order_amounts": [round(float(amount), 4) for *_, amount in kept],
        "orders_cut_at": cut_at,
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
    order_ts: np.ndarray = field(default_factory=lambda: np.zeros(0))  # every order, newest first
    order_keys: list[str] = field(default_factory=list)
    order_amounts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    orders_cut_at: float = 0.0  # orders before this time are not in the state (0: all are)

    def purchases_after(self, t: float) -> np.ndarray:
        return np.flatnonzero(self.purchase_ts > t)

    def orders_after(self, t: float) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(key, time, amount) of every order after ``t``; from the purchase lines for a state
        pushed before orders were kept."""
        if len(self.order_ts) or not len(self.purchase_ts):
            sel = np.flatnonzero(self.order_ts > t)
            return [self.order_keys[i] for i in sel], self.order_ts[sel], self.order_amounts[sel]
        totals: dict[str, list[float]] = {}
        for j in self.purchases_after(t):
            entry = totals.setdefault(self.purchase_orders[j], [float(self.purchase_ts[j]), 0.0])
            entry[0] = max(entry[0], float(self.purchase_ts[j]))
            entry[1] += float(self.purchase_amounts[j])
        keys = list(totals)
        return keys, np.array([totals[k][0] for k in keys]), np.array([totals[k][1] for k in keys])

    def complete_after(self, t: float) -> bool:
        """Whether every order after ``t`` is in the state."""
        return not self.orders_cut_at or self.orders_cut_at <= t

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
        keys, times, amounts = f.orders_after(snapshot_ts[i])
        if not len(keys):
            continue
        t_last = float(times.max())
        gap = max(0.0, (t_last - snapshot_ts[i]) / DAY)
        orders: dict[str, float] = {}
        order_day: dict[str, int] = {}
        for key, when, amount in zip(keys, times, amounts):
            orders[key] = orders.get(key, 0.0) + float(amount)
            order_day[key] = int(when // DAY)
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
