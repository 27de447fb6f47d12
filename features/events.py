"""The storefront's events: validated, deduplicated, appended durably, pushed online, exported to training.

One SQLite database (WAL, ``synchronous=FULL``) under the state directory holds every accepted
event, every rejected one with its reasons, the sessions attached to customers, and the customers
whose online state has yet to be rebuilt. The path of a batch:

1. each event is validated on its own; a bad one is kept in ``rejected`` with its reasons and the
   good ones go on;
2. the good ones are inserted in one transaction keyed by ``event_id`` (a repeat changes nothing)
   and the transaction commits (fsync) **before** the call is acknowledged: an acknowledged event
   survives a SIGKILL. The same transaction marks the customers it touches as ``dirty``;
3. :func:`publish` rebuilds each dirty customer's state from the log (purchases, basket) and
   writes it through the Feast push source ``customer_events_push`` into the online store, then
   clears the marks. Publishing holds the database's write lock, so two server workers never
   write an older state over a newer one; it is idempotent, so a crash between the commit and the
   push is repaired by the next publish (the service retries pending customers every second);
4. :func:`export_orders` writes the purchases as a raw order file that ingestion takes in like any
   export. Its invoice is the event's ``order_id`` (or one derived from the event), and ingestion
   identifies a line by invoice, product, quantity, price and customer, so the same order arriving
   later in the shop's own export is recognised and not counted twice.

A ``session_id`` seen without a customer (a shopper before login) is attached to the customer of
the first event that carries both; its earlier and later events then count as that customer's.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    model_validator,
)

from patron.faults import crash_point

log = logging.getLogger(__name__)

PUSH_SOURCE = "customer_events_push"
RECENT_VIEW = "customer_recent"
MAX_BATCH = 1000
MAX_FUTURE_SECONDS = 300  # clock skew allowed between the storefront and this service
MAX_PURCHASES = 100  # purchase lines kept in a customer's online state, newest first
MAX_BASKET = 30
REJECTED_BODY_BYTES = 4096  # a rejected event is kept whole up to this size, cut beyond


def _integral(value: object) -> object:
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return value


def _finite(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a number")
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return float(value)


Text = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")]


class Event(BaseModel):
    """One storefront event. Unknown fields are refused, nothing is coerced from a string."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Text = Field(description="unique per event: a repeat of a known id changes nothing")
    type: Literal["purchase", "add_to_cart", "view"]
    customer_id: Annotated[StrictInt, Field(ge=1, le=2**53), BeforeValidator(_integral)] | None = None
    session_id: Text | None = Field(None, description="a shopper's session; attached to the customer of the first event carrying both")
    item_id: Annotated[str, StringConstraints(strict=True, strip_whitespace=True, to_upper=True, min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")]
    quantity: Annotated[StrictInt, Field(ge=1, le=100_000), BeforeValidator(_integral)] | None = Field(None, description="default 1")
    price: Annotated[float, BeforeValidator(_finite), Field(gt=0, lt=1e7)] | None = Field(None, description="unit price; required for a purchase")
    timestamp: AwareDatetime = Field(description="when it happened, ISO 8601 with a UTC offset")
    order_id: Annotated[str, StringConstraints(strict=True, strip_whitespace=True, to_upper=True, min_length=1, max_length=64,
                                               pattern=r"^[^C\x00-\x1f][^\x00-\x1f]*$")] | None = Field(
        None, description="the order (invoice) a purchase belongs to, as the shop's order export will name it")

    @model_validator(mode="after")
    def _rules(self) -> Event:
        problems = []
        if self.customer_id is None and self.session_id is None:
            problems.append("needs customer_id or session_id")
        if self.type == "purchase" and self.price is None:
            problems.append("a purchase needs its unit price")
        if self.type != "purchase" and self.order_id is not None:
            problems.append("order_id belongs to purchases only")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def epoch(self) -> float:
        return self.timestamp.timestamp()


def _reasons(exc: ValidationError) -> list[str]:
    out = []
    for e in exc.errors(include_input=False, include_url=False, include_context=False):
        where = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "string_pattern_mismatch" and where == "order_id":
            msg = "must not start with C (a cancellation in order exports) nor hold control characters"
        out.append(f"{where}: {msg}" if where else msg)
    return out


@dataclass(frozen=True)
class Verdict:
    """What became of one event of a batch, in the batch's order."""

    index: int
    event_id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    reasons: list[str] = field(default_factory=list)


def validate(raw: object, now: float) -> Event | list[str]:
    if not isinstance(raw, dict):
        return [f"an event is a JSON object, got a JSON {type(raw).__name__}"]
    try:
        event = Event.model_validate(raw)
    except ValidationError as exc:
        return _reasons(exc)
    if event.epoch > now + MAX_FUTURE_SECONDS:
        return [f"timestamp: is more than {MAX_FUTURE_SECONDS} s in the future of this server's clock"]
    return event


# ----------------------------------------------------------------------------------- the log

_DDL = """
create table if not exists events (
    seq integer primary key autoincrement,
    event_id text not null unique,
    type text not null,
    customer_id integer,
    session_id text,
    item_id text not null,
    quantity integer not null,
    price real,
    order_id text,
    ts real not null,
    received_at real not null,
    exported_in text
);
create index if not exists events_customer on events(customer_id, ts);
create index if not exists events_session on events(session_id);
create index if not exists events_unexported on events(type, exported_in);
create table if not exists sessions (
    session_id text primary key,
    customer_id integer not null,
    attached_at real not null
);
create index if not exists sessions_customer on sessions(customer_id);
create table if not exists rejected (
    id integer primary key,
    received_at real not null,
    event_id text,
    reasons text not null,
    body text not null
);
create table if not exists dirty (
    customer_id integer primary key,
    seq integer not null,
    since real not null
);
"""


@dataclass(frozen=True)
class AppendResult:
    verdicts: list[Verdict]
    customers: list[int]  # whose online state must be rebuilt

    def count(self, status: str) -> int:
        return sum(v.status == status for v in self.verdicts)


class EventLog:
    """The durable event log of one state directory; safe to share between threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._con.execute("pragma journal_mode=wal")
        self._con.execute("pragma synchronous=full")  # every commit reaches the disk before the ack
        self._con.execute("pragma busy_timeout=30000")
        self._con.executescript(_DDL)
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database's write lock (across processes) until it ends."""
        with self._lock:
            self._con.execute("begin immediate")
            try:
                yield self._con
            except BaseException:
                self._con.execute("rollback")
                raise
            self._con.execute("commit")

    def append(self, raw_events: Sequence[object], now: float | None = None) -> AppendResult:
        """Validate, deduplicate and durably append a batch; returns a verdict per event."""
        now = time.time() if now is None else now
        checked = [validate(r, now) for r in raw_events]
        verdicts: list[Verdict] = []
        touched: dict[int, int] = {}
        with self._write() as con:
            for i, (raw, ev) in enumerate(zip(raw_events, checked)):
                if not isinstance(ev, Event):
                    eid = raw.get("event_id") if isinstance(raw, dict) and isinstance(raw.get("event_id"), str) else None
                    body = json.dumps(raw, default=str)[:REJECTED_BODY_BYTES]
                    con.execute("insert into rejected(received_at, event_id, reasons, body) values (?, ?, ?, ?)",
                                (now, eid, json.dumps(ev), body))
                    verdicts.append(Verdict(i, eid, "rejected", ev))
                    continue
                cur = con.execute(
                    "insert into events(event_id, type, customer_id, session_id, item_id, quantity, price, order_id, ts, received_at) "
                    "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict(event_id) do nothing",
                    (ev.event_id, ev.type, ev.customer_id, ev.session_id, ev.item_id, ev.quantity or 1, ev.price, ev.order_id,
                     ev.epoch, now),
                )
                if cur.rowcount == 0:
                    verdicts.append(Verdict(i, ev.event_id, "duplicate"))
                    continue
                seq = int(cur.lastrowid)
                notes: list[str] = []
                owner = ev.customer_id
                if ev.session_id is not None:
                    row = con.execute("select customer_id from sessions where session_id = ?", (ev.session_id,)).fetchone()
                    if row is None and ev.customer_id is not None:
                        con.execute("insert into sessions values (?, ?, ?)", (ev.session_id, ev.customer_id, now))
                    elif row is not None and ev.customer_id is None:
                        owner = int(row[0])
                    elif row is not None and int(row[0]) != ev.customer_id:
                        notes.append(f"session_id is attached to another customer; this event counts for customer {ev.customer_id} only")
                if owner is not None:
                    touched[owner] = seq
                verdicts.append(Verdict(i, ev.event_id, "accepted", notes))
            for customer, seq in touched.items():
                con.execute("insert into dirty values (?, ?, ?) on conflict(customer_id) do update set seq = excluded.seq",
                            (customer, seq, now))
        crash_point("events")  # committed, not yet published
        return AppendResult(verdicts, sorted(touched))

    # --------------------------------------------------------------------- reads

    def _events_of(self, con: sqlite3.Connection, customer_id: int) -> list[tuple]:
        return con.execute(
            """select type, item_id, quantity, price, order_id, ts, received_at, coalesce(session_id, ''), event_id from events
               where customer_id = ?
                  or (customer_id is null and session_id in (select session_id from sessions where customer_id = ?))
               order by ts desc, seq desc limit 2000""",
            (customer_id, customer_id),
        ).fetchall()

    def dirty(self, limit: int = 1000) -> list[int]:
        with self._lock:
            return [int(r[0]) for r in self._con.execute("select customer_id from dirty order by since limit ?", (limit,))]

    def lag(self, now: float | None = None) -> tuple[int, float]:
        """Customers waiting to be published, and how long the oldest has waited (seconds)."""
        now = time.time() if now is None else now
        with self._lock:
            n, since = self._con.execute("select count(*), min(since) from dirty").fetchone()
        return int(n), (max(0.0, now - since) if since is not None else 0.0)

    def rejected(self) -> pd.DataFrame:
        with self._lock:
            return pd.read_sql_query("select * from rejected order by id", self._con)

    def events(self) -> pd.DataFrame:
        with self._lock:
            return pd.read_sql_query("select * from events order by seq", self._con)

    # ------------------------------------------------------------------ publish

    @contextmanager
    def publishing(self, customers: Iterable[int] | None = None) -> Iterator[tuple[pd.DataFrame, list[tuple[int, int]]]]:
        """The state rows of dirty customers (all of them, or those given), under the write lock.

        The caller pushes the rows inside the ``with``; the marks are cleared when it leaves without
        an error, and kept (for the next try) when it raises.
        """
        with self._write() as con:
            if customers is None:
                marks = [(int(c), int(s)) for c, s in con.execute("select customer_id, seq from dirty order by since limit 1000")]
            else:
                wanted = sorted(set(int(c) for c in customers))
                marks = []
                for start in range(0, len(wanted), 500):
                    chunk = wanted[start:start + 500]
                    marks += [(int(c), int(s)) for c, s in con.execute(
                        f"select customer_id, seq from dirty where customer_id in ({','.join('?' * len(chunk))})", chunk)]
            rows = [customer_state(c, self._events_of(con, c)) for c, _ in marks]
            yield state_frame(rows), marks
            for c, s in marks:  # a newer event for the customer keeps its mark
                con.execute("delete from dirty where customer_id = ? and seq <= ?", (c, s))

    # ------------------------------------------------------------------ export

    def export_orders(self, out_dir: Path, now: float | None = None, guest_after_seconds: float = 86400.0) -> Path | None:
        """Write the purchases not exported yet as a raw order file for ingestion; None if there are none.

        A purchase counts for its customer, or for the customer its session was attached to. A
        session-only purchase waits ``guest_after_seconds`` for a login before it goes out as a
        guest line. The file is written and synced before the events are marked; a crash between
        the two exports them again next time, which ingestion recognises as the same lines.
        """
        now = time.time() if now is None else now
        with self._lock:
            rows = self._con.execute(
                """select e.seq, e.event_id, e.order_id, e.item_id, e.quantity, e.price, e.ts,
                          coalesce(e.customer_id, s.customer_id), e.session_id
                   from events e left join sessions s on e.customer_id is null and e.session_id = s.session_id
                   where e.type = 'purchase' and e.exported_in is null
                     and (e.customer_id is not null or s.customer_id is not null or e.received_at < ?)
                   order by e.seq""",
                (now - guest_after_seconds,),
            ).fetchall()
        if not rows:
            return None
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        name = f"events-{rows[0][0]:012d}-{rows[-1][0]:012d}.csv"
        tmp = out_dir / f".{name}.tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"])
            for _seq, event_id, order_id, item, qty, price, ts, customer, session in rows:
                invoice = order_id or order_key(None, customer, session, ts, event_id)
                when = dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
                w.writerow([invoice, item, "", qty, when, repr(float(price)), "" if customer is None else int(customer), ""])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out_dir / name)
        crash_point("export_events")
        with self._write() as con:
            for start in range(0, len(rows), 500):
                seqs = [r[0] for r in rows[start:start + 500]]
                con.execute(f"update events set exported_in = ? where seq in ({','.join('?' * len(seqs))})", [name, *seqs])
        return out_dir / name


def order_key(order_id: str | None, customer: int | None, session: str | None, ts: float, event_id: str) -> str:
    """The invoice a purchase line belongs to: its order id, or one shared by the lines of a checkout
    (same shopper, same second). Never starts with C (a cancellation in order exports)."""
    if order_id:
        return order_id
    who = f"c{customer}" if customer is not None else f"s{session}" if session else f"e{event_id}"
    return "EV" + hashlib.sha1(f"{who}@{int(ts)}".encode()).hexdigest()[:12].upper()


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


def publish(store, event_log: EventLog, customers: Iterable[int] | None = None) -> int:
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
