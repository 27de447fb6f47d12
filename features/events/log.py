"""The durable event log: accepted events, rejected ones with their reasons, sessions, the customers
whose online state is to be rebuilt, and the purchases handed back to ingestion."""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from patron.faults import crash_point
from patron.features.events.schema import MAX_ORDERS, REJECTED_BODY_BYTES, Event, Verdict, order_key, validate
from patron.features.events.state import customer_state, state_frame
from patron.rules import Plausibility

log = logging.getLogger(__name__)

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
    exported_in text,
    digest text,
    key_id text
);
create index if not exists events_customer on events(customer_id, ts);
create index if not exists events_session on events(session_id);
create index if not exists events_unexported on events(type, exported_in);
create table if not exists sessions (
    session_id text primary key,
    customer_id integer not null,
    attached_at real not null,
    contested integer not null default 0
);
create index if not exists sessions_customer on sessions(customer_id);
create table if not exists rejected (
    id integer primary key,
    received_at real not null,
    event_id text,
    reasons text not null,
    body text not null,
    key_id text
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
        self._migrate()
        self._lock = threading.RLock()

    def _migrate(self) -> None:
        """Columns added since a log was created (an older service's log keeps working)."""
        for table, column, kind in (("events", "digest", "text"), ("events", "key_id", "text"), ("rejected", "key_id", "text"),
                                    ("sessions", "contested", "integer not null default 0")):
            have = {r[1] for r in self._con.execute(f"pragma table_info({table})")}
            if column not in have:
                self._con.execute(f"alter table {table} add column {column} {kind}")

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

    def append(self, raw_events: Sequence[object], now: float | None = None, *, plausible: Plausibility = Plausibility(),
               floor: dt.datetime | None = None, key_id: str | None = None) -> AppendResult:
        """Validate, deduplicate and durably append a batch; returns a verdict per event.

        An event is refused when it is not believable (the order-line rules of ``plausible``; no time
        before ``floor``, the shop's first order); a known ``event_id`` with the same content is a
        duplicate (nothing changes), with other content a conflict (refused, kept with the reason).
        ``key_id`` names the API key that sent the batch; it is stored with every event.
        """
        now = time.time() if now is None else now
        checked = [validate(r, now, plausible, floor) for r in raw_events]
        verdicts: list[Verdict] = []
        touched: dict[int, int] = {}
        with self._write() as con:

            def reject(i: int, raw: object, status: str, reasons: list[str]) -> None:
                eid = raw.get("event_id") if isinstance(raw, dict) and isinstance(raw.get("event_id"), str) else None
                body = json.dumps(raw, default=str)[:REJECTED_BODY_BYTES]
                con.execute("insert into rejected(received_at, event_id, reasons, body, key_id) values (?, ?, ?, ?, ?)",
                            (now, eid, json.dumps(reasons), body, key_id))
                verdicts.append(Verdict(i, eid, status, reasons))  # type: ignore[arg-type]

            for i, (raw, ev) in enumerate(zip(raw_events, checked)):
                if not isinstance(ev, Event):
                    reject(i, raw, "rejected", ev)
                    continue
                digest = ev.digest()
                cur = con.execute(
                    "insert into events(event_id, type, customer_id, session_id, item_id, quantity, price, order_id, ts, received_at, "
                    "digest, key_id) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict(event_id) do nothing",
                    (ev.event_id, ev.type, ev.customer_id, ev.session_id, ev.item_id, ev.quantity or 1, ev.price, ev.order_id,
                     ev.epoch, now, digest, key_id),
                )
                if cur.rowcount == 0:
                    (known,) = con.execute("select digest from events where event_id = ?", (ev.event_id,)).fetchone()
                    if known is not None and known != digest:
                        reject(i, raw, "conflict", ["event_id: already used for another event; an event id names one event only"])
                    else:
                        verdicts.append(Verdict(i, ev.event_id, "duplicate"))
                    continue
                seq = int(cur.lastrowid)
                for customer in self._attribute(con, ev, now):
                    touched[customer] = seq
                verdicts.append(Verdict(i, ev.event_id, "accepted"))
            for customer, seq in touched.items():
                con.execute("insert into dirty values (?, ?, ?) on conflict(customer_id) do update set seq = excluded.seq",
                            (customer, seq, now))
        crash_point("events")  # committed, not yet published
        return AppendResult(verdicts, sorted(touched))

    @staticmethod
    def _attribute(con: sqlite3.Connection, ev: Event, now: float) -> list[int]:
        """The customers whose state an event changes. A session is attached to the first customer
        seen with it and never re-attached; when another customer uses it too, it is contested and
        its anonymous events count for nobody (both customers' states are rebuilt without them)."""
        if ev.session_id is None:
            return [ev.customer_id] if ev.customer_id is not None else []
        row = con.execute("select customer_id, contested from sessions where session_id = ?", (ev.session_id,)).fetchone()
        if row is None:
            if ev.customer_id is None:
                return []
            con.execute("insert into sessions(session_id, customer_id, attached_at) values (?, ?, ?)",
                        (ev.session_id, ev.customer_id, now))
            return [ev.customer_id]
        owner, contested = int(row[0]), bool(row[1])
        if ev.customer_id is None:
            return [] if contested else [owner]
        if ev.customer_id != owner and not contested:
            con.execute("update sessions set contested = 1 where session_id = ?", (ev.session_id,))
            return [ev.customer_id, owner]
        return [ev.customer_id]

    # --------------------------------------------------------------------- reads

    # a customer's events: their own, and the anonymous ones of their uncontested sessions; of
    # those, only rows whose values can be true (every row was validated on its way in, but a log
    # written by an older version, restored from elsewhere or edited by hand may hold anything,
    # and no stored row may break a customer's state: year 0, NaN amounts, negative quantities)
    @staticmethod
    def _sane(e: str = "") -> str:
        """SQL: a row whose values can be true (``e``: the events table's alias with its dot)."""
        return (f"({e}type in ('purchase', 'add_to_cart', 'view') and typeof({e}item_id) = 'text' and {e}item_id <> '' "
                f"and {e}ts between {Plausibility().earliest.timestamp():.0f} and 32503680000 "
                f"and {e}quantity between 1 and 2147483647 and ({e}type <> 'purchase' or ({e}price > 0 and {e}price < 1e12)))")

    _OF = """(customer_id = ? or (customer_id is null and session_id in
              (select session_id from sessions where customer_id = ? and contested = 0)))"""

    def _events_of(self, con: sqlite3.Connection, customer_id: int) -> list[tuple]:
        """The newest events of a customer (enough for their latest items and basket)."""
        return con.execute(
            f"""select type, item_id, quantity, price, order_id, ts, received_at, coalesce(session_id, ''), event_id from events
               where {self._OF} and {self._sane()} order by ts desc, seq desc limit 2000""",
            (customer_id, customer_id),
        ).fetchall()

    def _orders_of(self, con: sqlite3.Connection, customer_id: int) -> list[tuple]:
        """Every purchase order of a customer, newest first: (order id or NULL, second, newest time,
        amount); up to MAX_ORDERS + 1 (one more says the list was cut)."""
        return con.execute(
            f"""select order_id, cast(ts as integer), max(ts), sum(quantity * price) from events
               where type = 'purchase' and {self._OF} and {self._sane()}
               group by coalesce(order_id, ''), case when order_id is null then cast(ts as integer) end
               order by max(ts) desc limit ?""",
            (customer_id, customer_id, MAX_ORDERS + 1),
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
            rows = [customer_state(c, self._events_of(con, c), self._orders_of(con, c)) for c, _ in marks]
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
                f"""select e.seq, e.event_id, e.order_id, e.item_id, e.quantity, e.price, e.ts,
                          coalesce(e.customer_id, s.customer_id), e.session_id
                   from events e left join sessions s on e.customer_id is null and e.session_id = s.session_id
                                                        and s.contested = 0
                   where e.type = 'purchase' and e.exported_in is null
                     and (e.customer_id is not null or s.customer_id is not null or e.received_at < ?)
                     and {self._sane("e.")}
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
