"""Behaviour of the synthetic order generator: format of the real exports, and the structure models learn from."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from patron_synth.shop import CLASSES, COUNTRIES, HEADER, SynthSummary, catalogue, generate, product_cluster

HEADER_LINE = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
NON_PRODUCT = {"POST": "POSTAGE", "M": "Manual", "BANK CHARGES": "Bank Charges", "AMAZONFEE": "AMAZON FEE"}
START = dt.date(2023, 1, 2)
DAYS = 120
PRODUCTS = 1000
SEED = 7
GUEST_SHARE = 0.2
DIRTY_SHARE = 0.01


def _read(folder: Path) -> pd.DataFrame:
    """All lines of a generated folder as strings, with the file's day and derived typed columns."""
    frames = []
    for path in sorted(folder.iterdir()):
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == list(HEADER), path.name
        assert all(len(r) == len(HEADER) for r in rows[1:]), path.name
        df = pd.DataFrame(rows[1:], columns=list(HEADER))
        df["file_day"] = path.name.removesuffix(".csv")
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df["cancel"] = df["InvoiceNo"].str.startswith("C")
    df["qty"] = df["Quantity"].astype(np.int64)
    df["ts"] = pd.to_datetime(df["InvoiceDate"], format="%Y-%m-%d %H:%M:%S", errors="coerce")
    df["product"] = ~df["StockCode"].isin(list(NON_PRODUCT))
    df["invalid"] = df["ts"].isna() | (df["product"] & ((df["UnitPrice"] == "0.00") | (df["qty"].abs() >= 10_000)))
    return df


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthSummary, pd.DataFrame]:
    out = tmp_path_factory.mktemp("synth") / "daily"  # does not exist yet: generate creates it
    summary = generate(
        out, customers=800, products=PRODUCTS, days=DAYS, start=START, seed=SEED, guest_share=GUEST_SHARE, dirty_share=DIRTY_SHARE
    )
    return out, summary, _read(out)


@pytest.fixture(scope="module")
def orders(shop: tuple[Path, SynthSummary, pd.DataFrame]) -> pd.DataFrame:
    """One row per (non-cancelled) invoice: its day, customer, and the set of catalogue products on it."""
    df = shop[2]
    index_of = catalogue(PRODUCTS, SEED).index_of
    lines = df[~df["cancel"] & df["product"]]
    inv = lines.groupby("InvoiceNo", sort=False).agg(
        day=("file_day", "first"), customer=("CustomerID", "first"), items=("StockCode", lambda s: frozenset(index_of[c] for c in s))
    )
    inv["day"] = pd.to_datetime(inv["day"])
    return inv


# --------------------------------------------------------------------------- format


def test_files_are_daily_csvs_with_the_exact_header(shop: tuple[Path, SynthSummary, pd.DataFrame]) -> None:
    out, _, df = shop
    names = sorted(p.name for p in out.iterdir())
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}\.csv", n) for n in names)
    days = [dt.date.fromisoformat(n[:10]) for n in names]
    assert START <= days[0] and days[-1] < START + dt.timedelta(days=DAYS)
    for path in out.iterdir():
        assert path.read_text(encoding="utf-8").split("\n", 1)[0] == HEADER_LINE
    valid = df["ts"].notna()
    assert (df.loc[valid, "InvoiceDate"].str[:10] == df.loc[valid, "file_day"]).all()  # each file holds its day


def test_fields_are_written_like_the_real_exports(shop: tuple[Path, SynthSummary, pd.DataFrame]) -> None:
    df = shop[2]
    assert df["InvoiceNo"].str.fullmatch(r"C?\d{6}").all()
    products = df[df["product"]]
    assert products["StockCode"].str.fullmatch(r"\d{5}[A-Z]?").all()
    assert products["StockCode"].str.fullmatch(r"\d{5}[A-Z]").any()  # some variants with a letter suffix
    assert products["Description"].str.fullmatch(r"[A-Z][A-Z -]+ \d{4}").all()
    assert (df.loc[~df["product"], "Description"] == df.loc[~df["product"], "StockCode"].map(NON_PRODUCT)).all()
    assert df["Quantity"].str.fullmatch(r"-?[1-9]\d*").all()
    assert df["UnitPrice"].str.fullmatch(r"\d+\.\d{2}").all()
    assert df["CustomerID"].str.fullmatch(r"(\d{5}\.0)?").all()
    assert df["Country"].isin(COUNTRIES).all()
    assert (df["Country"] == "United Kingdom").mean() > 0.8
    valid = df["ts"].notna()
    assert df.loc[valid, "InvoiceDate"].str.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}").all()
    hours = df.loc[valid, "ts"].dt.hour
    assert hours.min() >= 7 and hours.max() <= 19


def test_an_invoice_is_one_customer_at_one_moment_and_numbers_follow_time(shop: tuple[Path, SynthSummary, pd.DataFrame]) -> None:
    df = shop[2]
    valid = df[df["ts"].notna()]
    per_invoice = valid.groupby("InvoiceNo").agg(ts=("ts", "nunique"), cust=("CustomerID", "nunique"), country=("Country", "nunique"))
    assert (per_invoice[["ts", "cust", "country"]] == 1).all().all()
    first = valid.groupby("InvoiceNo").agg(ts=("ts", "first"))
    first["no"] = first.index.str.lstrip("C").astype(int)
    first = first.sort_values(["ts", "no"])
    assert first["no"].is_monotonic_increasing
    assert first["no"].is_unique  # a number is used by one invoice only, cancellations included
    known = df[df["CustomerID"] != ""]
    assert (known.groupby("CustomerID")["Country"].nunique() == 1).all()  # country fixed per customer


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate(tmp_path / name, customers=80, products=60, days=30, seed=seed)
    a, b, c = ({p.name: p.read_bytes() for p in (tmp_path / x).iterdir()} for x in "abc")
    assert a == b
    assert a != c


def test_compressed_files_hold_the_same_text_and_are_reproducible(tmp_path: Path) -> None:
    plain, packed, again = (
        generate(tmp_path / name, customers=80, products=60, days=20, seed=5, compress=compress)
        for name, compress in (("plain", False), ("gz", True), ("gz2", True))
    )
    assert plain == packed == again
    names = sorted(p.name for p in (tmp_path / "gz").iterdir())
    assert names and all(n.endswith(".csv.gz") for n in names)
    for name in names:
        raw = (tmp_path / "gz" / name).read_bytes()
        assert raw == (tmp_path / "gz2" / name).read_bytes()
        assert gzip.decompress(raw) == (tmp_path / "plain" / name.removesuffix(".gz")).read_bytes()


# --------------------------------------------------------------------------- structure


def test_guest_orders_have_no_customer_and_match_the_share(shop: tuple[Path, SynthSummary, pd.DataFrame], orders: pd.DataFrame) -> None:
    df = shop[2]
    assert abs((orders["customer"] == "").mean() - GUEST_SHARE) < 0.04
    order_lines = df[~df["cancel"]]
    assert abs((order_lines["CustomerID"] == "").mean() - GUEST_SHARE) < 0.05
    assert (df.loc[df["cancel"], "CustomerID"] != "").all()  # returns come from known customers


def test_no_guests_when_the_share_is_zero(tmp_path: Path) -> None:
    summary = generate(tmp_path, customers=50, products=40, days=30, guest_share=0.0)
    df = _read(tmp_path)
    assert (df["CustomerID"] != "").all()
    assert summary.classes["guest"] == 0


def test_product_popularity_is_heavy_tailed(shop: tuple[Path, SynthSummary, pd.DataFrame]) -> None:
    df = shop[2]
    counts = df.loc[df["product"] & ~df["cancel"], "StockCode"].value_counts()
    top = counts.iloc[: PRODUCTS // 10].sum() / counts.sum()
    assert top > 0.4  # uniform popularity would give 0.1


def test_products_of_a_cluster_are_bought_together(orders: pd.DataFrame) -> None:
    cat = catalogue(PRODUCTS, SEED)
    basket = np.zeros((len(orders), PRODUCTS))
    for row, items in enumerate(orders["items"]):
        basket[row, list(items)] = 1.0
    co = basket.T @ basket
    same = cat.clusters[:, None] == cat.clusters[None, :]
    off_diagonal = ~np.eye(PRODUCTS, dtype=bool)
    within = co[same & off_diagonal].mean()
    across = co[~same].mean()
    assert within > 3 * across


def test_product_cluster_is_the_catalogue_truth_and_stable() -> None:
    cat = catalogue(PRODUCTS, SEED)
    assert [product_cluster(i, PRODUCTS, SEED) for i in range(PRODUCTS)] == cat.clusters.tolist()
    assert len(set(cat.clusters.tolist())) == cat.n_clusters > 1
    assert len(set(cat.stock_codes)) == len(set(cat.descriptions)) == PRODUCTS
    assert cat.descriptions[42].endswith(" 0042")
    # variants of one family (same base code) are the same kind of thing, hence the same cluster
    fam: dict[str, set[int]] = {}
    for code, cluster in zip(cat.stock_codes, cat.clusters.tolist()):
        fam.setdefault(code.rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), set()).add(cluster)
    assert all(len(c) == 1 for c in fam.values())
    with pytest.raises(ValueError, match="i must be"):
        product_cluster(PRODUCTS, PRODUCTS, SEED)


def test_customers_have_favourites_that_come_back(orders: pd.DataFrame) -> None:
    known = orders[orders["customer"] != ""]
    share_of_orders = known.explode("items").groupby("items").size() / len(known)
    lifts = []
    for _, group in known.groupby("customer"):
        if len(group) < 4:
            continue
        counts = group.explode("items")["items"].value_counts()
        lifts.append((counts.iloc[0] / len(group)) / share_of_orders[counts.index[0]])
    assert len(lifts) > 30
    assert np.median(lifts) > 2  # a customer's top product is in their orders far more often than in anyone's


def test_purchase_rates_are_heavy_tailed_and_customers_drop_out(orders: pd.DataFrame) -> None:
    known = orders[orders["customer"] != ""]
    per = known.groupby("customer")["day"].agg(["count", "min", "max"])
    assert per["count"].max() >= 5 * per["count"].median()  # a few customers buy far more often
    assert (per["count"] == 1).mean() > 0.2  # many buy once
    end = pd.Timestamp(START + dt.timedelta(days=DAYS - 1))
    regular = per[per["count"] >= 3]
    gap = (regular["max"] - regular["min"]).dt.days / (regular["count"] - 1)
    silent = (end - regular["max"]).dt.days > np.maximum(3 * gap, 20)
    # For a customer still buying at their own pace this happens about e**-3 = 5% of the time.
    assert len(regular) > 50
    assert silent.mean() > 0.2


def test_customers_arrive_over_time_more_at_the_start(orders: pd.DataFrame) -> None:
    known = orders[orders["customer"] != ""]
    first = (known.groupby("customer")["day"].min() - pd.Timestamp(START)).dt.days
    assert (first < DAYS / 2).mean() > 0.6
    assert (first >= 3 * DAYS / 4).mean() > 0.02
    assert first.min() == 0


def test_returns_cancel_lines_of_an_earlier_order_of_the_same_customer(shop: tuple[Path, SynthSummary, pd.DataFrame]) -> None:
    df = shop[2].copy()
    df["inv_ts"] = df.groupby("InvoiceNo")["ts"].transform("max")  # a dirty date on one line hides nothing
    returns = df[df["cancel"]]
    assert returns["InvoiceNo"].nunique() >= 10
    assert (returns["qty"] < 0).all() and (df.loc[~df["cancel"], "qty"] > 0).all()
    sales = df[~df["cancel"]]
    for _, ret in returns.groupby("InvoiceNo"):
        when, who, codes = ret["inv_ts"].iloc[0], ret["CustomerID"].iloc[0], set(ret["StockCode"])
        window = (sales["inv_ts"] < when) & (sales["inv_ts"] >= when.normalize() - pd.Timedelta(days=10))
        earlier = sales[(sales["CustomerID"] == who) & window]
        matches = [g for _, g in earlier.groupby("InvoiceNo") if codes <= set(g["StockCode"])]
        assert matches, ret
        original = matches[-1].set_index("StockCode")["qty"]
        assert all(-q <= original[c] for c, q in zip(ret["StockCode"], ret["qty"]))


def test_orders_carry_postage_and_fees(shop: tuple[Path, SynthSummary, pd.DataFrame]) -> None:
    df = shop[2]
    order_lines = df[~df["cancel"]]
    post = order_lines[order_lines["StockCode"] == "POST"]
    assert len(post) > 0 and (post["Description"] == "POSTAGE").all()
    abroad = order_lines.groupby("InvoiceNo").agg(abroad=("Country", lambda s: s.iloc[0] != "United Kingdom"))
    has_post = order_lines.groupby("InvoiceNo")["StockCode"].agg(lambda s: "POST" in set(s))
    assert has_post[abroad["abroad"]].mean() > 5 * has_post[~abroad["abroad"]].mean()


def test_dirty_rows_are_present_at_the_asked_share(shop: tuple[Path, SynthSummary, pd.DataFrame]) -> None:
    df = shop[2]
    bad = df[df["invalid"]]
    assert abs(len(bad) / len(df) - DIRTY_SHARE) < 0.004
    assert (bad["InvoiceDate"] == "not-a-date").any()
    assert (bad["UnitPrice"] == "0.00").any()
    assert (bad["qty"] >= 10_000).any()
    clean = df[~df["invalid"]]
    assert clean["qty"].abs().max() < 10_000


def test_summary_counts_what_is_in_the_files(shop: tuple[Path, SynthSummary, pd.DataFrame]) -> None:
    out, summary, df = shop
    days = sorted(df["file_day"].unique())
    cls = np.select(
        [df["invalid"], ~df["product"], df["CustomerID"] == "", df["cancel"]],
        ["invalid", "non_product", "guest", "return"],
        default="sale",
    )
    counts = pd.Series(cls).value_counts()
    assert summary == SynthSummary(
        files=len(list(out.iterdir())),
        lines=len(df),
        customers=df.loc[df["CustomerID"] != "", "CustomerID"].nunique(),
        products=df.loc[df["product"], "StockCode"].nunique(),
        first_day=dt.date.fromisoformat(days[0]),
        last_day=dt.date.fromisoformat(days[-1]),
        classes={c: int(counts.get(c, 0)) for c in CLASSES},
    )
    assert all(summary.classes[c] > 0 for c in CLASSES)
    assert summary.customers == 800  # everyone places a first order on arrival


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("customers", 0),
        ("customers", 2.5),
        ("products", -1),
        ("days", 0),
        ("days", True),
        ("seed", -1),
        ("guest_share", 1.0),
        ("guest_share", -0.1),
        ("dirty_share", 1.5),
        ("start", dt.datetime(2023, 1, 2, 12, 0)),
        ("start", "2023-01-02"),
    ],
)
def test_invalid_arguments_are_rejected_by_name(tmp_path: Path, name: str, value: object) -> None:
    kwargs: dict[str, object] = dict(customers=10, products=10, days=5)
    kwargs[name] = value
    with pytest.raises(ValueError, match=rf"^{name} must .*got {re.escape(repr(value))}"):
        generate(tmp_path / "out", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()
