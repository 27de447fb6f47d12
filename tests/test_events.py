"""The event path without a server: validation, deduplication, durability, sessions, the online
state pushed through Feast (SQLite and Redis), features brought up to date, and the way back into
training through ingestion."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from patron.features.events import EventLog, Fresh, apply_purchases, publish
from patron.features.ingest import ingest
from patron.settings import StatePaths
from tests.conftest import write_raw

T0 = dt.datetime(2011, 7, 1, 10, 0, tzinfo=dt.timezone.utc)


def events_path(home: Path) -> Path:
    return StatePaths.for_home(home).events_log


def orders_dir(home: Path) -> Path:
    return StatePaths.for_home(home).event_orders


def ev(event_id: str, kind: str = "purchase", customer: int | None = 17850, item: str = "85123A", minutes: float = 0, **extra) -> dict:
    body = {"event_id": event_id, "type": kind, "item_id": item, "timestamp": (T0 + dt.timedelta(minutes=minutes)).isoformat()}
    if customer is not None:
        body["customer_id"] = customer
    if kind == "purchase":
        body.setdefault("price", 2.55)
        body.setdefault("quantity", 6)
    body.update(extra)
    return body


@pytest.fixture
def elog(tmp_path: Path) -> EventLog:
    log = EventLog(events_path(tmp_path))
    yield log
    log.close()


# ------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("event", "says"),
    [
        ({k: v for k, v in ev("a").items() if k != "price"}, "a purchase needs its unit price"),
        (ev("a", customer=None), "needs customer_id or session_id"),
        ({**ev("a"), "timestamp": "2011-07-01 10:00:00"}, "timestamp"),  # no UTC offset
        ({**ev("a"), "timestamp": "yesterday"}, "timestamp"),
        ({**ev("a"), "timestamp": "2999-01-01T00:00:00Z"}, "in the future"),
        ({**ev("a"), "customer_id": "17850"}, "customer_id"),
        ({**ev("a"), "quantity": -2}, "quantity"),
        ({**ev("a"), "price": 0}, "price"),
        ({**ev("a"), "type": "refund"}, "type"),
        ({**ev("a"), "colour": "red"}, "colour"),
        ({**ev("a"), "order_id": "C536379"}, "must not start with C"),
        (ev("a", kind="view", order_id="536365"), "order_id belongs to purchases only"),
        ({**ev("a"), "event_id": ""}, "event_id"),
        ("not an object", "JSON object"),
    ],
)
def test_a_bad_event_is_rejected_with_its_reason_and_kept(elog: EventLog, event, says) -> None:
    result = elog.append([event, ev("good")])
    bad, good = result.verdicts
    assert bad.status == "rejected" and any(says in r for r in bad.reasons), bad.reasons
    assert good.status == "accepted"  # the rest of the batch goes on
    kept = elog.rejected()
    assert len(kept) == 1 and says in kept["reasons"][0]
    assert len(elog.events()) == 1


def test_an_event_id_counts_once_within_and_across_batches(elog: EventLog) -> None:
    first = elog.append([ev("a"), ev("b", item="22423"), ev("a")])
    assert [v.status for v in first.verdicts] == ["accepted", "accepted", "duplicate"]
    again = elog.append([ev("b", item="22423"), ev("a", price=99.0)])  # a repeat changes nothing
    assert [v.status for v in again.verdicts] == ["duplicate", "conflict"] and again.customers == []
    assert "already used for another event" in again.verdicts[1].reasons[0]  # another event under a known id: refused
    stored = elog.events()
    assert list(stored["event_id"]) == ["a", "b"] and stored["price"].tolist() == [2.55, 2.55]
    assert elog.rejected()["event_id"].tolist() == ["a"]  # kept, with its reason


def test_an_appended_event_survives_a_sigkill_right_after_the_append(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal
        from patron.features.events import EventLog
        log = EventLog({str(events_path(tmp_path))!r})
        r = log.append([{ev("durable")!r}])
        assert r.verdicts[0].status == "accepted"
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == -9
    log = EventLog(events_path(tmp_path))
    try:
        assert log.events()["event_id"].tolist() == ["durable"]
        assert log.dirty() == [17850]  # still to be published: the service's publisher will do it
    finally:
        log.close()


# ----------------------------------------------------------------------------- online state


def test_state_keeps_purchases_newest_first_and_the_basket_since_the_last_purchase(elog: EventLog) -> None:
    elog.append([
        ev("p1", item="A", minutes=0, quantity=2, price=1.5),
        ev("p2", item="B", minutes=0, quantity=1, price=4.0),  # same checkout (same second): same order
        ev("c1", kind="add_to_cart", item="C", minutes=5),
        ev("c2", kind="add_to_cart", item="D", minutes=6),
        ev("p3", item="D", minutes=7, quantity=1, price=3.0, order_id="581000"),  # D bought: leaves the basket
        ev("c3", kind="add_to_cart", item="E", minutes=8),
        ev("v1", kind="view", item="F", minutes=9),
    ])
    with elog.publishing() as (frame, marks):
        assert marks and len(frame) == 1
        row = frame.iloc[0]
    assert row["purchase_items"] == ["D", "B", "A"]  # newest first; within a second, the later event first
    assert row["purchase_orders"][0] == "581000" and row["purchase_orders"][1] == row["purchase_orders"][2]
    assert sorted(row["purchase_amounts"]) == [3.0, 3.0, 4.0]
    assert row["basket_items"] == ["E"]  # C and D were before the last purchase; views are not the basket
    assert row["last_event_ts"] == int((T0 + dt.timedelta(minutes=9)).timestamp())
    assert elog.dirty() == []  # published: the marks are cleared


def test_a_session_before_login_counts_for_the_customer_once_attached(elog: EventLog) -> None:
    first = elog.append([ev("s1", kind="add_to_cart", customer=None, item="X", session_id="sess-1")])
    assert first.customers == []  # nobody to publish for yet
    login = elog.append([ev("s2", kind="view", customer=42, item="Y", session_id="sess-1", minutes=1)])
    assert login.customers == [42]
    later = elog.append([ev("s3", kind="add_to_cart", customer=None, item="Z", session_id="sess-1", minutes=2)])
    assert later.customers == [42]  # the attached session's later events are the customer's too
    with elog.publishing([42]) as (frame, _):
        assert frame.iloc[0]["basket_items"] == ["Z", "X"]
    # another customer uses the session: it is contested, its anonymous events count for nobody, and
    # the answer tells neither customer anything about the other
    other = elog.append([ev("s4", kind="view", customer=7, item="Y", session_id="sess-1", minutes=3)])
    assert other.verdicts[0].status == "accepted" and other.verdicts[0].reasons == []
    assert other.customers == [7, 42]  # 42's state is rebuilt without the session's events
    with elog.publishing([42]) as (frame, _):
        assert frame.iloc[0]["basket_items"] == []
    anonymous = elog.append([ev("s5", kind="add_to_cart", customer=None, item="W", session_id="sess-1", minutes=4)])
    assert anonymous.verdicts[0].status == "accepted" and anonymous.customers == []
    again = elog.append([ev("s6", kind="view", customer=42, item="Y", session_id="sess-1", minutes=5)])
    assert again.customers == [42]  # no re-attachment: the session stays contested


def test_a_failed_push_keeps_the_customers_pending(elog: EventLog) -> None:
    class Down:
        def push(self, *a, **k):
            raise ConnectionError("online store down")

    elog.append([ev("a")])
    with pytest.raises(ConnectionError):
        publish(Down(), elog)
    assert elog.dirty() == [17850] and elog.lag()[0] == 1


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_published_state_reads_back_from_the_feast_online_store(tmp_path: Path, backend: str, request) -> None:
    from patron.features.store import apply_definitions, open_store
    from patron.serving.online import RecentEvents

    url = request.getfixturevalue("redis_url") if backend == "redis" else "redis://127.0.0.1:6379/0"
    store = open_store(tmp_path / "feature_store", backend, url)
    apply_definitions(store)
    log = EventLog(events_path(tmp_path))
    try:
        customer = 910_000_000 + int(time.time() * 1000) % 1_000_000  # unique per run on a shared Redis
        log.append([ev("a", customer=customer, item="A1", quantity=2, price=1.25),
                    ev("b", customer=customer, kind="add_to_cart", item="B1", minutes=1)])
        assert publish(store, log) == 1
        fresh, missing = RecentEvents(store).read([customer, customer + 1])
        assert missing is None
        assert fresh.purchase_items == ["A1"] and fresh.basket_items == ["B1"] and fresh.purchase_amounts.tolist() == [2.5]
        assert fresh.order_amounts.tolist() == [2.5] and fresh.orders_cut_at == 0
        assert fresh.purchase_ts.tolist() == [T0.timestamp()] and fresh.updated_at > 0
    finally:
        log.close()


# -------------------------------------------------------------------------- features, fresh


def test_a_purchase_after_the_snapshot_resets_recency_and_adds_the_order() -> None:
    snapshot = T0.timestamp()
    frame = pd.DataFrame({
        "customer_id": [1, 2], "recency_days": [120.0, 3.0], "frequency": [3, 5], "monetary_total": [300.0, 500.0],
        "avg_order_value": [100.0, 100.0], "tenure_days": [400.0, 200.0], "mean_interorder_days": [140.0, 49.25],
        "orders_30d": [0, 1], "orders_90d": [0, 2], "orders_prev_90d": [1, 1], "activity_trend": [-1.0, 0.33],
        "spend_90d": [0.0, 200.0], "spend_365d": [100.0, 500.0], "purchase_days": [3, 5], "btyd_frequency": [2, 4],
        "btyd_recency_days": [280.0, 197.0], "btyd_age_days": [400.0, 200.0], "btyd_monetary": [100.0, 100.0],
        "decayed_orders_30": [0.1, 0.9], "decayed_orders_90": [0.5, 2.0], "active_weeks_13": [0, 2], "active_weeks_26": [1, 3],
    })
    two_days = snapshot + 2 * 86400
    fresh = Fresh(purchase_ts=np.array([two_days, two_days, snapshot - 3600]), purchase_items=["A", "B", "OLD"],
                  purchase_amounts=np.array([30.0, 20.0, 999.0]), purchase_orders=["o1", "o1", "o0"], basket_items=[],
                  last_event_ts=two_days, updated_at=time.time())
    out, ref = apply_purchases(frame, np.array([snapshot, snapshot]), [fresh, None])
    a = out.iloc[0]
    assert a["recency_days"] == 0 and a["frequency"] == 4 and a["monetary_total"] == 350  # one order of two lines; OLD is in the snapshot
    assert a["avg_order_value"] == 87.5 and a["tenure_days"] == 402 and a["orders_30d"] == 1 and a["spend_90d"] == 50
    assert a["purchase_days"] == 4 and a["btyd_frequency"] == 3 and a["btyd_age_days"] == 402 and a["btyd_recency_days"] == 402
    assert a["btyd_monetary"] == pytest.approx((100 * 2 + 50) / 3) and a["activity_trend"] == 0.0
    assert a["mean_interorder_days"] == pytest.approx(402 / 3)
    assert a["decayed_orders_30"] == pytest.approx(0.1 * np.exp(-2 / 30) + 1)
    assert ref.tolist() == [two_days, snapshot]
    pd.testing.assert_series_equal(out.iloc[1], frame.iloc[1])  # no events: untouched


# ------------------------------------------------------------------------- back to training


def test_purchases_go_back_to_training_once_even_when_the_shop_exports_the_order_later(tmp_path: Path, elog: EventLog) -> None:
    data = tmp_path / "data"
    elog.append([
        ev("e1", item="85123A", quantity=6, price=2.55, order_id="581001"),
        ev("e2", item="71053", quantity=6, price=3.39, order_id="581001"),
        ev("e3", item="22423", quantity=1, price=12.75),  # no order id: an invoice of its own
        ev("e4", kind="add_to_cart", item="22423"),  # not a purchase: never an order line
        ev("g1", customer=None, session_id="guest-1", item="21730", quantity=1, price=4.25),  # a guest, not attached yet
    ])
    first = elog.export_orders(orders_dir(tmp_path))
    lines = pd.read_csv(first, dtype=str)
    assert lines["InvoiceNo"].tolist()[:2] == ["581001", "581001"] and lines["InvoiceNo"][2].startswith("EV")
    assert len(lines) == 3  # the guest waits for a login (or a day) before it goes out without a customer
    assert elog.export_orders(orders_dir(tmp_path)) is None  # nothing new
    r1 = ingest([orders_dir(tmp_path)], data)
    assert r1.rows_written == 3 and r1.classes["sale"] == 3

    # The shop's own export of the same order a day later, as its text says it (other formats,
    # minutes only, local time an hour off) plus one line the storefront never reported.
    shop = write_raw(tmp_path / "shop" / "2011-07-02.csv", [
        ["581001", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "6", "2011-07-01 11:00", "2.550", "17850.0", "United Kingdom"],
        ["581001", "71053", "WHITE METAL LANTERN", "6.0", "2011-07-01 11:00", "3.39", "17850", "United Kingdom"],
        ["581001", "84406B", "CREAM CUPID HEARTS COAT HANGER", "8", "2011-07-01 11:00", "2.75", "17850", "United Kingdom"],
    ])
    r2 = ingest([shop.parent], data)
    assert r2.rows_written == 1  # only the line the events did not have

    # A crash after the file was written but before the events were marked exports them again:
    # ingestion recognises every line.
    elog._con.execute("update events set exported_in = null")
    again = elog.export_orders(orders_dir(tmp_path), now=time.time() + 2 * 86400)  # the guest's day has passed too
    assert again is not None and again != first
    r3 = ingest([orders_dir(tmp_path)], data)
    assert r3.rows_written == 1 and r3.classes["guest"] == 1  # only the guest line is new


def test_the_pipeline_takes_the_event_purchases_in(tmp_path: Path) -> None:
    from patron.pipelines.pipeline import event_orders

    paths = StatePaths.for_home(tmp_path)
    assert event_orders(paths) == []  # no event log: nothing to add
    log = EventLog(events_path(tmp_path))
    log.append([ev("e1")])
    log.close()
    folders = event_orders(paths)
    assert folders == [orders_dir(tmp_path)] and len(list(orders_dir(tmp_path).glob("events-*.csv"))) == 1
    assert event_orders(paths) == folders and len(list(orders_dir(tmp_path).glob("events-*.csv"))) == 1


def test_a_pipeline_run_counts_the_stored_purchases_as_orders(tmp_path: Path) -> None:
    from patron.pipelines.pipeline import run_pipeline
    from patron.settings import PatronSettings
    from patron.training.data import load_lines
    from patron_synth.shop import generate

    shop = tmp_path / "shop"
    generate(shop, customers=60, products=30, days=60, start=dt.date(2023, 1, 2), seed=3)
    home = tmp_path / "home"
    raw = pd.concat([pd.read_csv(f, dtype=str) for f in sorted(shop.rglob("*.csv*"))])
    regular = raw.dropna(subset=["CustomerID", "Country"]).iloc[0]
    regular_id = int(float(regular["CustomerID"]))
    log = EventLog(events_path(home))
    when = dt.datetime(2023, 3, 3, 12, 0, tzinfo=dt.timezone.utc)  # after the shop's last day
    log.append([ev("web-1", customer=424242, item="EVENT-ONLY", quantity=3, price=4.0, order_id="W1", timestamp=when.isoformat()),
                ev("web-2", customer=regular_id, item="EVENT-ONLY", quantity=1, price=4.0, timestamp=when.isoformat())],
               now=when.timestamp() + 60)
    log.close()
    result = run_pipeline(PatronSettings(home=home), [shop], dt.date(2023, 3, 10), 7, kinds=())
    assert result.details["ingest"]["classes"]["sale"] >= 1
    lines = load_lines(home / "data")
    mine = lines[lines["customer_id"] == 424242]
    assert mine[["invoice_no", "item_id", "quantity", "amount"]].values.tolist() == [["W1", "EVENT-ONLY", 3, 12.0]]
    features = pd.read_parquet(home / "feature_store" / "data" / "customer_features.parquet")
    latest = features[features["customer_id"] == regular_id].sort_values("event_timestamp").iloc[-1]
    assert latest["country"] == regular["Country"].strip()  # an event's order, which has no country, does not blank it
    assert latest["recency_days"] < 7.5  # the event's order is their latest
    again = run_pipeline(PatronSettings(home=home), [shop], dt.date(2023, 3, 10), 7, kinds=())
    assert (load_lines(home / "data")["customer_id"] == 424242).sum() == 1  # once, however many runs
    assert "features" in again.skipped  # nothing new: the journal's data fingerprint is unchanged


def test_a_log_that_cannot_be_written_is_a_503_not_a_500(tmp_path: Path) -> None:
    import sqlite3
    from types import SimpleNamespace

    from patron.serving import logic
    from patron.serving import schemas as S
    from patron.serving.errors import EventsUnavailable

    class Full(EventLog):
        def append(self, raw_events, now=None, **rules):
            raise sqlite3.OperationalError("database or disk is full")

    from patron.settings import PatronSettings

    rt = SimpleNamespace(events=Full(events_path(tmp_path)), settings=PatronSettings(), data_start=lambda: None)
    with pytest.raises(EventsUnavailable):
        logic.events(rt, S.EventsRequest(events=[ev("a")]))
    rt.events.close()
