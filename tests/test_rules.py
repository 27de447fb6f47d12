"""The shared rules and helpers of the patron package: each pinned to known answers, and each
written in one place only (a search of the product code finds one definition)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from patron import duck, rules, sampling
from patron.times import to_utc, utc_timestamp

REPO = Path(__file__).resolve().parents[1]
PRODUCT_DIRS = ("patron", "features", "training", "serving", "pipelines")
UTC = dt.timezone.utc


def product_sources() -> dict[Path, str]:
    return {p: p.read_text() for d in PRODUCT_DIRS for p in sorted((REPO / d).rglob("*.py"))}


# ------------------------------------------------------------------------------------ time


@pytest.mark.parametrize(
    "value, expected",
    [
        (dt.date(2011, 7, 1), dt.datetime(2011, 7, 1, tzinfo=UTC)),
        (dt.datetime(2011, 7, 1, 12, 30), dt.datetime(2011, 7, 1, 12, 30, tzinfo=UTC)),  # naive means UTC
        (dt.datetime(2011, 7, 1, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))), dt.datetime(2011, 7, 1, 0, 0, tzinfo=UTC)),
        (pd.Timestamp("2011-07-01 08:00"), dt.datetime(2011, 7, 1, 8, 0, tzinfo=UTC)),
        (pd.Timestamp("2011-07-01 08:00", tz="America/New_York"), dt.datetime(2011, 7, 1, 12, 0, tzinfo=UTC)),
        ("2011-07-01", dt.datetime(2011, 7, 1, tzinfo=UTC)),
        (np.datetime64("2011-07-01T06:00"), dt.datetime(2011, 7, 1, 6, 0, tzinfo=UTC)),
    ],
)
def test_every_moment_becomes_the_same_utc_instant(value, expected) -> None:
    got = to_utc(value)
    assert got == expected and got.tzinfo is not None and got.utcoffset() == dt.timedelta(0)
    assert utc_timestamp(value) == pd.Timestamp(expected)


@pytest.mark.parametrize("bad", [pd.NaT, "not a date", 17, None])
def test_what_is_not_a_moment_is_refused_by_name(bad) -> None:
    with pytest.raises(ValueError, match="expected a date or a time"):
        to_utc(bad)


# ---------------------------------------------------------------------------------- DuckDB


def test_duckdb_sessions_run_in_utc_and_paths_cannot_break_the_sql(tmp_path: Path) -> None:
    odd = tmp_path / "it's here.parquet"
    pd.DataFrame({"x": [1, 2]}).to_parquet(odd)
    with duck.connect() as con:
        assert con.execute("SELECT current_setting('TimeZone')").fetchone()[0] == "UTC"
        assert con.execute(f"SELECT sum(x) FROM {duck.scan([odd])}").fetchone()[0] == 3
    assert duck.quote("a'b") == "'a''b'"
    with pytest.raises(ValueError):
        duck.scan([])


# ------------------------------------------------------------------------------ line rules

# (invoice, item, quantity, price, customer, line_class as ingestion gives it, valid purchase, product sale)
CASES = [
    ("536365", "85123A", 6, 2.55, 17850, "sale", True, True),
    ("536365", "POST", 1, 18.0, 17850, "non_product", True, False),  # paid postage is revenue
    ("C536379", "85123A", -1, 2.55, 17850, "return", False, False),  # cancellation
    ("536366", "85123A", -2, 2.55, 17850, "return", False, False),  # negative quantity
    ("536367", "85123A", 3, 2.55, None, "guest", False, True),  # a guest's purchase is demand
    ("536368", "85123A", 3, 0.0, 17850, "sale", False, True),  # free line: not a purchase
    ("536369", None, 2, 4.0, 17850, "sale", True, False),  # a purchase of an unknown product
]


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        [c[:6] for c in CASES], columns=["invoice_no", "item_id", "quantity", "unit_price", "customer_id", "line_class"]
    ).astype({"customer_id": "Int64"})


def test_a_valid_purchase_is_the_same_in_sql_and_in_python() -> None:
    frame = _frame()
    expected = [c[6] for c in CASES]
    with duck.connect() as con:
        con.register("lines", frame)
        sql = con.execute(f"SELECT {rules.VALID_PURCHASE_SQL} FROM lines").fetchall()
    assert [bool(r[0]) for r in sql] == expected
    got = rules.valid_purchase(frame["customer_id"], frame["quantity"], frame["unit_price"], frame["invoice_no"])
    assert got.tolist() == expected


def test_a_product_sale_is_the_same_in_sql_and_in_python() -> None:
    frame = _frame()
    expected = [c[7] for c in CASES]
    with duck.connect() as con:
        con.register("lines", frame)
        sql = con.execute(f"SELECT coalesce({rules.PRODUCT_SALE_SQL}, false) FROM lines").fetchall()
    assert [bool(r[0]) for r in sql] == expected
    assert rules.product_sale(frame["line_class"], frame["item_id"], frame["quantity"]).tolist() == expected


@pytest.mark.parametrize(
    "code, expected",
    [("POST", True), ("DOT", True), ("BANK CHARGES", True), ("GIFT_0001_20", True), ("85123A", False),
     ("POSTER", False), ("", False), (None, False)],
)
def test_service_lines_are_recognised_the_same_in_sql_and_in_python(code, expected) -> None:
    assert rules.is_non_product(code) is expected
    with duck.connect() as con:
        (got,) = con.execute(f"SELECT coalesce({rules.non_product_sql('c')}, false) FROM (SELECT ?::VARCHAR AS c)", [code]).fetchone()
    assert bool(got) is expected


# --------------------------------------------------------------------------- the popular list


def test_the_popular_list_ranks_products_by_recent_buyers_and_never_lists_service_lines() -> None:
    from patron.training.recs.history import History

    as_of = dt.datetime(2023, 3, 1, tzinfo=UTC)
    rows = []
    # B: 3 recent buyers; A: 2 recent, 4 in all; C: 2 recent, 2 in all; POST: bought by everyone
    for c, item, days_ago in [(1, "B", 1), (2, "B", 2), (3, "B", 3), (1, "A", 2), (2, "A", 5), (3, "A", 60), (4, "A", 70),
                              (5, "C", 1), (6, "C", 2), *[(c, "POST", 1) for c in range(1, 7)]]:
        rows.append({"customer_id": c, "invoice_no": f"{c}-{days_ago}", "item_id": item, "quantity": 1, "unit_price": 1.0,
                     "amount": 1.0, "invoice_ts": pd.Timestamp(as_of) - pd.Timedelta(days=days_ago),
                     "line_class": "non_product" if item == "POST" else "sale"})
    h = History.from_lines(pd.DataFrame(rows), as_of)
    order, buyers = h.popular_order(30)
    assert [h.items[i] for i in order] == ["B", "A", "C"]  # A before C: more buyers of all time
    assert buyers[list(h.items).index("POST")] == 6  # counted, but never listed


# ------------------------------------------------------------------------ customer samples


def test_a_customer_sample_is_the_same_in_sql_and_in_python() -> None:
    """The same ids are kept by the SQL form (the training frames) and the NumPy form (the
    recommender's holdout), for any seed and share; larger shares keep a superset."""
    rng = np.random.default_rng(3)
    ids = np.concatenate([rng.integers(0, 10**6, 3_000), rng.integers(10**9, 10**12, 500), [0, 1, -5, -40503 * 2]])
    with duck.connect() as con:
        con.register("ids", pd.DataFrame({"customer_id": ids}))
        for fraction, seed in ((0.5, 0), (0.1, 2), (0.9, 7), (1.0, 0)):
            sql = con.execute(f"SELECT {sampling.SAMPLE_SQL} AS k FROM ids", sampling.sql_params(fraction, seed)).df()["k"]
            assert (sql.to_numpy() == sampling.kept(ids, fraction, seed)).all(), (fraction, seed)
    small, large = sampling.kept(ids, 0.2), sampling.kept(ids, 0.6)
    assert (large | ~small).all() and 0.15 < small.mean() < 0.25
    assert sampling.kept(ids, 1.0).all()


def test_a_customer_sample_keeps_about_the_share_asked_and_nothing_when_all_fit() -> None:
    ids = np.arange(1, 100_001)
    kept, fraction = sampling.sample_customers(np.concatenate([ids, ids[:10]]), 20_000, seed=1)
    assert fraction == 0.2 and 19_000 < len(kept) < 21_000 and (np.diff(kept) > 0).all()
    assert np.array_equal(sampling.sample_customers(ids[:500], 20_000)[0], ids[:500])
    with pytest.raises(ValueError, match="share"):
        sampling.kept(ids, 0.0)


# ------------------------------------------------------------------------ one place each


@pytest.mark.parametrize(
    "pattern, home",
    [
        (r"def to_utc\b|def _as_of_utc\b|def _utc_timestamp\b|tz_localize\(\"UTC\"\)", "patron/times.py"),
        (r"SET TimeZone", "patron/duck.py"),
        (r"replace\(\"'\", \"''\"\)", "patron/duck.py"),
        (r"quantity > 0 AND unit_price > 0", "patron/rules.py"),
        (r"starts_with\(invoice_no, 'C'\)|startswith\(\"C\"\)|CANCELLATION_PREFIX = ", "patron/rules.py"),
        (r"\"BANK CHARGES\"|\"AMAZONFEE\"", "patron/rules.py"),
        (r"IN \('sale', 'guest'\)", "patron/rules.py"),
        (r"item_nonproduct\[order\] == 0", "training/recs/history.py"),
        (r"2654435761", "patron/sampling.py"),
    ],
)
def test_each_rule_is_written_once(pattern: str, home: str) -> None:
    where = sorted(str(p.relative_to(REPO)) for p, text in product_sources().items() if re.search(pattern, text))
    assert where == [home], f"{pattern!r} is written in {where}, expected only in {home}"


# -------------------------------------------------------------------------- a plausible line

PLAUSIBLE_CASES = [  # (item, quantity, unit price, believable)
    ("85123A", 6, 2.55, True),
    ("85123A", 9_999, 2.55, True),
    ("85123A", 10_000, 2.55, False),  # a data-entry error, not an order
    ("85123A", 2, 100_000.0, True),
    ("85123A", 2, 100_000.01, False),
    ("POST", 1, 250_000.0, True),  # service lines carry odd amounts legitimately
    ("85123A", 100_000, 9_999_999.99, False),
]


def test_a_plausible_line_is_the_same_for_ingestion_and_for_events(tmp_path: Path) -> None:
    """One definition of a believable line: ingestion quarantines what events are refused for."""
    from patron.features.ingest import ingest, read_quarantine
    from tests.conftest import line, write_raw

    rules_ = rules.Plausibility()
    now = dt.datetime(2026, 1, 1, tzinfo=UTC)
    when = dt.datetime(2025, 6, 1, 10, tzinfo=UTC)
    rows = [line(f"5{i:05d}", item, q, "2025-06-01 10:00:00", p, cust=str(100 + i)) for i, (item, q, p, _) in enumerate(PLAUSIBLE_CASES)]
    ingest([write_raw(tmp_path / "lines.csv", rows)], tmp_path / "data", plausible=rules_)
    quarantined = set(read_quarantine(tmp_path / "data")["InvoiceNo"])
    for i, (item, q, p, believable) in enumerate(PLAUSIBLE_CASES):
        said = rules_.problems(quantity=q, unit_price=p, item_id=item, when=when, now=now)
        assert (not said) is believable, (item, q, p, said)
        assert (f"5{i:05d}" not in quarantined) is believable, (item, q, p)


@pytest.mark.parametrize(
    "when, believable",
    [(dt.datetime(2025, 12, 31, 23, 59, tzinfo=UTC), True), (dt.datetime(2026, 1, 1, 0, 4, tzinfo=UTC), True),
     (dt.datetime(2026, 1, 1, 0, 6, tzinfo=UTC), False), (dt.datetime(1989, 12, 31, tzinfo=UTC), False)],
)
def test_a_time_is_believable_from_the_earliest_date_to_a_few_minutes_ahead(when, believable) -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=UTC)
    said = rules.Plausibility().problems(quantity=1, unit_price=1.0, item_id="85123A", when=when, now=now)
    assert (not said) is believable, said
    floor = dt.datetime(2025, 12, 31, 23, 59, 30, tzinfo=UTC)  # the shop's first order
    assert rules.Plausibility().problems(quantity=1, unit_price=1.0, item_id="85123A", when=floor - dt.timedelta(seconds=1),
                                         now=now, floor=floor)
