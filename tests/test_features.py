"""Feature computation: known values on tiny data, and no order at or after T leaks into features as of T."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from patron.features.compute import build_features, snapshot_grid
from patron.features.ingest import ingest
from patron.times import to_utc
from tests.conftest import line, write_raw

UTC = dt.timezone.utc
T = dt.datetime(2011, 1, 15, tzinfo=UTC)


def orders(tmp_path: Path) -> list[Path]:
    a, b = "12345.0", "23456.0"
    rows = [
        # customer A: three orders before T, one return, and two orders that must not count for T
        line("1001", "10001", 2, "2011-01-01 10:00:00", 5.0, cust=a),
        line("1001", "10002", 1, "2011-01-01 10:00:00", 10.0, cust=a),
        line("1002", "10001", 4, "2011-01-05 10:00:00", 5.0, cust=a),
        line("1003", "10003", 1, "2011-01-11 10:00:00", 30.0, cust=a),
        line("C1004", "10003", -1, "2011-01-12 09:00:00", 30.0, cust=a),
        line("1005", "10004", 100, "2011-01-15 00:00:00", 9.0, cust=a),  # exactly at T: excluded
        line("1006", "10004", 100, "2011-01-20 12:00:00", 9.0, cust=a),  # after T: excluded
        # customer B buys once, from Germany; a guest buys product 10001 too
        line("2001", "10001", 3, "2011-01-10 12:00:00", 5.0, cust=b, country="Germany"),
        line("3001", "10001", 5, "2011-01-14 12:00:00", 5.0, cust=""),
        line("3002", "10001", 50, "2011-01-15 08:00:00", 5.0, cust=""),  # on T's day: excluded
    ]
    return [write_raw(tmp_path / "orders.csv", rows)]


@pytest.fixture
def built(tmp_path: Path, home: Path):
    ingest(orders(tmp_path), home / "data")
    b = build_features(home / "data", home / "fs" / "data", dt.date(2011, 1, 15), snapshots=[T])
    cust = pd.read_parquet(b.customer_path).set_index("customer_id")
    prod = pd.read_parquet(b.product_path).set_index("item_id")
    return b, cust, prod


def test_customer_features_as_of_t_use_only_orders_before_t(built) -> None:
    _, cust, _ = built
    a = cust.loc[12345]
    assert a["frequency"] == 3  # orders at and after T would make it 4 or 5
    assert a["monetary_total"] == pytest.approx(20.0 + 20.0 + 30.0)
    assert a["recency_days"] == pytest.approx((T - dt.datetime(2011, 1, 11, 10, tzinfo=UTC)).total_seconds() / 86400)
    assert a["tenure_days"] == pytest.approx((T - dt.datetime(2011, 1, 1, 10, tzinfo=UTC)).total_seconds() / 86400)
    assert a["mean_interorder_days"] == pytest.approx(5.0)  # 1st..11th over two gaps
    assert a["std_interorder_days"] == pytest.approx(pd.Series([4.0, 6.0]).std())
    assert a["distinct_products"] == 3
    assert a["return_rate"] == pytest.approx(30.0 / 70.0)
    assert a["avg_basket_items"] == pytest.approx((3 + 4 + 1) / 3)
    assert a["orders_30d"] == 3 and a["orders_prev_90d"] == 0 and a["activity_trend"] == 1.0
    b = cust.loc[23456]
    assert b["frequency"] == 1 and b["country"] == "Germany" and pd.isna(b["mean_interorder_days"])
    assert pd.Timestamp(cust.loc[12345, "event_timestamp"]) == pd.Timestamp(T)


def test_product_features_count_guests_but_not_the_snapshot_day(built) -> None:
    _, _, prod = built
    p = prod.loc["10001"]
    assert p["units_30d"] == 2 + 4 + 3 + 5  # not the guest's 50 on T's day
    assert p["lines_30d"] == 4
    assert p["buyers_30d"] == 2  # the guest is no known buyer
    assert p["units_7d"] == 3 + 5  # 8th..14th January
    assert p["avg_price"] == pytest.approx(5.0)
    assert p["description"] == "WHITE HANGING HEART T-LIGHT HOLDER"
    assert "10004" not in prod.index  # first sold at T: unknown as of T


def test_a_later_snapshot_does_see_the_later_orders(tmp_path: Path, home: Path) -> None:
    ingest(orders(tmp_path), home / "data")
    later = to_utc(dt.date(2011, 1, 22))
    b = build_features(home / "data", home / "fs" / "data", later, snapshots=[T, later])
    cust = pd.read_parquet(b.customer_path)
    a = cust[cust.customer_id == 12345].set_index("event_timestamp")["frequency"]
    assert a.loc[pd.Timestamp(T)] == 3 and a.loc[pd.Timestamp(later)] == 5


def test_snapshot_grid_ends_at_as_of_and_starts_after_the_first_order() -> None:
    first = dt.datetime(2011, 1, 1, 10, tzinfo=UTC)
    grid = snapshot_grid(first, to_utc(dt.date(2011, 1, 29)), 7)
    assert [g.day for g in grid] == [8, 15, 22, 29]
    with pytest.raises(ValueError, match="at least 1 day, got 0"):
        snapshot_grid(first, T, 0)


def test_purchase_history_summary_counts_days_not_invoices(built) -> None:
    """The BG/NBD summary counts purchase days; regularity and decay features by hand."""
    _, cust, _ = built
    a = cust.loc[12345]  # orders on 1, 5 and 11 January, snapshot on the 15th
    assert a["purchase_days"] == 3 and a["btyd_frequency"] == 2
    assert a["btyd_recency_days"] == pytest.approx(10.0)  # 1st to 11th, whole days
    assert a["btyd_age_days"] == pytest.approx(14.0)  # 1st to the 15th
    assert a["btyd_monetary"] == pytest.approx((20.0 + 30.0) / 2)  # the first day's 20 left out
    assert a["months_active"] == 1
    assert a["active_weeks_13"] == 2  # ages 3.6, 9.9 and 13.6 days: weeks 0, 1, 1
    ages = [(T - dt.datetime(2011, 1, d, 10, tzinfo=UTC)).total_seconds() / 86400 for d in (1, 5, 11)]
    assert a["decayed_orders_30"] == pytest.approx(sum(np.exp(-x / 30) for x in ages))
    assert a["tenure_censored"] == 1  # first seen in the export's first four weeks
    b = cust.loc[23456]
    assert b["btyd_frequency"] == 0 and b["btyd_recency_days"] == 0 and b["btyd_monetary"] == 0


def test_lines_without_a_product_count_for_customers_not_products(tmp_path: Path, home: Path) -> None:
    """A shop that exports no product detail still gets customer features."""
    rows = [line("9001", "", 1, "2011-01-03 10:00:00", 40.0, cust="555.0", desc=""),
            line("9002", "", 2, "2011-01-09 10:00:00", 25.0, cust="555.0", desc="")]
    ingest([write_raw(tmp_path / "no-products.csv", rows)], home / "data")
    b = build_features(home / "data", home / "fs" / "data", dt.date(2011, 1, 15), snapshots=[T])
    cust = pd.read_parquet(b.customer_path).set_index("customer_id")
    assert cust.loc[555, "frequency"] == 2 and cust.loc[555, "monetary_total"] == pytest.approx(90.0)
    assert cust.loc[555, "distinct_products"] == 0
    assert pd.read_parquet(b.product_path).empty


def test_the_btyd_summary_counts_purchase_days_as_the_literature_does(tmp_path: Path, home: Path) -> None:
    """BG/NBD's inputs, as the feature snapshot gives them: a purchase day is a UTC calendar day
    with an order (two orders on one day are one occasion); frequency counts the repeat days,
    recency runs from the first to the last purchase day, age from the first day to the snapshot,
    and the mean repeat spend leaves the first day out."""
    rows = [
        # customer 1: three purchase days, Jan 15 holding two orders
        line("1", "A1", 2, "2011-01-01 10:00:00", 5.0, cust="1"),
        line("2", "A1", 1, "2011-01-01 15:00:00", 5.0, cust="1"),
        line("3", "B1", 4, "2011-01-15 09:00:00", 5.0, cust="1"),
        line("4", "C1", 1, "2011-01-15 18:00:00", 4.0, cust="1"),
        line("5", "A1", 6, "2011-02-12 12:00:00", 5.0, cust="1"),
        line("6", "E1", 1, "2011-03-01 00:00:00", 100.0, cust="1"),  # at the snapshot: not counted
        # customer 2: one purchase just before the snapshot
        line("7", "G1", 10, "2011-02-28 23:59:00", 5.0, cust="2"),
        # customer 4: an hour apart, but on two UTC calendar days
        line("8", "I1", 1, "2010-12-31 23:30:00", 8.0, cust="4"),
        line("9", "J1", 1, "2011-01-01 00:30:00", 12.5, cust="4"),
    ]
    ingest([write_raw(tmp_path / "btyd.csv", rows)], home / "data")
    t = dt.datetime(2011, 3, 1, tzinfo=UTC)
    b = build_features(home / "data", home / "fs" / "data", t, snapshots=[t])
    got = pd.read_parquet(b.customer_path).set_index("customer_id")[
        ["btyd_frequency", "btyd_recency_days", "btyd_age_days", "btyd_monetary"]]
    expected = pd.DataFrame(
        {"btyd_frequency": [2, 0, 1], "btyd_recency_days": [42.0, 0.0, 1.0], "btyd_age_days": [59.0, 1.0, 60.0],
         "btyd_monetary": [(24.0 + 30.0) / 2, 0.0, 12.5]},
        index=pd.Index([1, 2, 4], name="customer_id"),
    )
    pd.testing.assert_frame_equal(got.sort_index(), expected, check_dtype=False)


def test_a_build_that_cannot_fit_says_so_with_the_setting_that_helps(tmp_path: Path, home: Path) -> None:
    from patron.duck import OutOfMemory

    ingest(orders(tmp_path), home / "data")
    with pytest.raises(OutOfMemory, match=r"needed more than the 256KB .* raise PATRON_DUCKDB_MEMORY_LIMIT"):
        build_features(home / "data", home / "fs" / "data", dt.date(2011, 1, 15), snapshots=[T], memory_limit="256KB")
    assert not (home / "fs" / "data" / "customer_features.parquet").exists()  # nothing half-written


def test_a_query_past_the_memory_limit_says_what_met_it_and_what_would_help(tmp_path: Path) -> None:
    from patron import duck

    con = duck.connect(memory_limit="32MB", temp_dir=tmp_path)
    with pytest.raises(duck.OutOfMemory) as err, duck.within_memory("the test table (3 snapshots)", "32MB"):
        con.execute("SELECT list(i) FROM range(20000000) t(i)").fetchall()  # one list: cannot spill
    msg = str(err.value)
    assert "the test table (3 snapshots)" in msg and "32MB" in msg and "PATRON_DUCKDB_MEMORY_LIMIT" in msg
    assert "DuckDB: " in msg and "allocate" in msg  # DuckDB's own account of the failed allocation


def test_customers_computed_a_range_of_ids_at_a_time_get_the_same_rows(tmp_path: Path, home: Path, monkeypatch) -> None:
    """The customer table of a large shop is computed one range of customer ids at a time: each
    customer's rows, and the two shop-wide dates in them (the data's start, which censors tenure,
    and the first purchase of any product), come out as from one query over everyone."""
    from patron.features import compute

    raw = orders(tmp_path) + [write_raw(tmp_path / "more.csv", [
        line("4001", "10005", 1, "2010-12-01 09:00:00", 3.0, cust="34567.0"),  # the shop's first day
        line("4002", "10001", 2, "2011-01-03 09:00:00", 5.0, cust="45678.0"),
        line("4003", "10002", 1, "2011-01-09 09:00:00", 10.0, cust="45678.0"),
    ])]
    ingest(raw, home / "data")
    grid = [T - dt.timedelta(days=7), T]
    whole = build_features(home / "data", tmp_path / "whole", dt.date(2011, 1, 15), snapshots=grid)
    monkeypatch.setattr(compute, "customers_per_range", lambda limit, snapshots: 1)  # one customer per query
    ranged = build_features(home / "data", tmp_path / "ranged", dt.date(2011, 1, 15), snapshots=grid)
    a, b = (pd.read_parquet(x.customer_path).drop(columns="created_at") for x in (whole, ranged))
    assert len(a) == 7 and a["customer_id"].nunique() == 4
    pd.testing.assert_frame_equal(a, b)  # in the same order, too
    assert b.set_index("customer_id").loc[45678, "tenure_censored"].tolist() == [0, 0]  # 33 days after the shop's start
    assert not list((tmp_path / "ranged").glob(".*range*"))


def test_customer_id_ranges_cover_every_customer_once(tmp_path: Path, home: Path) -> None:
    from patron.features.compute import DuckTables
    from patron.features.ingest import OrderStore

    ingest(orders(tmp_path), home / "data")
    t = DuckTables(OrderStore(home / "data").committed_parts(), memory_limit="1GB", temp_dir=tmp_path / "spill")
    try:
        assert t.customer_ranges(1) == [(12345, 23456), (23456, 23457)]
        assert t.customer_ranges(10) == [(12345, 23457)]
    finally:
        t.close()


def test_memory_limits_read_as_duckdb_reads_them() -> None:
    from patron import duck

    assert duck.limit_bytes("3GB") == 3e9 and duck.limit_bytes("1.5GiB") == 1.5 * 2**30
    assert duck.limit_bytes("500 MB") == 5e8
    with pytest.raises(ValueError, match="expected, got '3 gigs'"):
        duck.limit_bytes("3 gigs")


def test_duckdb_spills_into_a_private_folder_never_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    from patron import duck

    monkeypatch.chdir(tmp_path)
    with duck.connect(memory_limit="48MB") as con:
        con.execute("SELECT i, md5(i::VARCHAR) AS h FROM range(1000000) t(i) ORDER BY h").fetchall()  # spills
        spill = Path(con.execute("SELECT current_setting('temp_directory')").fetchone()[0])
    assert not (tmp_path / ".tmp").exists() and list(tmp_path.iterdir()) == []
    assert spill.is_dir() and spill.stat().st_mode & 0o077 == 0
