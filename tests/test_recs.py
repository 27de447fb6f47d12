"""Recommenders and their evaluation, on tiny order histories with known answers.

Everything runs offline on data made here (a socket guard fails any network use).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import socket

import numpy as np
import pandas as pd
import pytest

from patron.training.recs.base import REC_COLUMNS, FormatVersionError, load_model
from patron.training.recs.baselines import ALSRecommender, BuyAgainRecommender, EASERecommender, PopularityRecommender
from patron.training.recs.eval import evaluate, ground_truth, ndcg_at_k, recall_at_k, seen_items
from patron.training.recs.model import Recommender
from patron.training.trees import TreeEnsemble

AS_OF = dt.date(2011, 7, 1)
START = pd.Timestamp("2011-01-03", tz="UTC")
# a small, fast configuration for tiny data (the defaults are tuned for a real shop)
FAST = dict(label_days=30, extra_windows=(), als_factors=8, als_iterations=10, ease_lam=5.0, ease_min_buyers=1,
            rk_max_iter=30, rk_min_samples_leaf=5, n_cop=20, n_als=20, n_ease=20)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a recommender test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def make_lines(rows: list[tuple[int, str, str, pd.Timestamp]]) -> pd.DataFrame:
    """(customer, invoice, item, timestamp) -> order lines in the shape of training.data.load_lines."""
    df = pd.DataFrame(rows, columns=["customer_id", "invoice_no", "item_id", "invoice_ts"])
    df["customer_id"] = df["customer_id"].astype("int64")
    df["quantity"] = 1
    df["unit_price"] = 1.0
    df["amount"] = 1.0
    df["line_class"] = np.where(df["item_id"] == "POST", "non_product", "sale")
    df["invoice_ts"] = pd.to_datetime(df["invoice_ts"], utc=True).astype("datetime64[us, UTC]")
    cols = ["customer_id", "invoice_no", "item_id", "quantity", "unit_price", "amount", "invoice_ts", "line_class"]
    return df[cols].sort_values(["invoice_ts", "invoice_no"], kind="stable").reset_index(drop=True)


def cluster_lines() -> tuple[pd.DataFrame, set[str], set[str]]:
    """Two groups of 12 customers buying from two disjoint groups of 8 items, every ~9 days for half
    a year; items 6..8 of each group are sold from day 140 on (so that customers discover new items
    within the ranker's training window). Customer 1 (group A) only ever buys A1..A5."""
    rng = np.random.default_rng(7)
    group_a = {f"A{i}" for i in range(1, 9)}
    group_b = {f"B{i}" for i in range(1, 9)}
    rows, inv = [], 0
    for g, (custs, items) in enumerate([(range(1, 13), sorted(group_a)), (range(101, 113), sorted(group_b))]):
        for c in custs:
            for day in range(int(rng.integers(0, 5)), 178, 9):
                inv += 1
                allowed = items[:5] if c == 1 or day < 140 else items
                basket = rng.choice(allowed, size=min(4, len(allowed)), replace=False)
                for it in basket:
                    rows.append((c, f"{inv:06d}", str(it), START + pd.Timedelta(days=day, hours=int(c % 7))))
    return make_lines(rows), group_a, group_b


@pytest.fixture(scope="module")
def cluster():
    return cluster_lines()


@pytest.fixture(scope="module")
def fitted(cluster):
    lines, _, _ = cluster
    return {
        "recommender": Recommender(**FAST).fit(lines, AS_OF),
        "ease": EASERecommender(lam=5.0, min_buyers=1).fit(lines, AS_OF),
        "als": ALSRecommender(factors=8, iterations=10).fit(lines, AS_OF),
        "buy_again": BuyAgainRecommender().fit(lines, AS_OF),
        "popularity": PopularityRecommender().fit(lines, AS_OF),
    }


def items_of(recs: pd.DataFrame, customer: int) -> list[str]:
    r = recs[recs["customer_id"] == customer].sort_values("rank")
    return r["item_id"].tolist()


# ------------------------------------------------------------------------------------------ metrics


def test_recall_and_ndcg_hand_computed():
    assert recall_at_k(["a", "b", "c"], {"a", "c"}) == 1.0
    assert ndcg_at_k(["a", "b", "c"], {"a", "c"}) == pytest.approx((1 + 0.5) / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["b", "a"], {"a"}, k=20) == pytest.approx(1 / math.log2(3))
    assert recall_at_k(["b", "a"], {"a", "x", "y"}, k=1) == 0.0
    assert recall_at_k(["a", "b"], {"a", "x", "y"}, k=2) == 0.5  # min(2, 3) = 2
    assert recall_at_k([], {"a"}) == 0.0 and recall_at_k(["a"], set()) == 0.0
    # min(20, |truth|): 25 relevant items, 20 of them listed -> perfect
    truth = {f"t{i}" for i in range(25)}
    assert recall_at_k([f"t{i}" for i in range(20)], truth) == 1.0
    assert ndcg_at_k([f"t{i}" for i in range(20)], truth) == pytest.approx(1.0)
    half = [f"t{i}" for i in range(10)] + [f"z{i}" for i in range(10)]
    assert recall_at_k(half, truth) == 0.5
    idcg = sum(1 / math.log2(i + 2) for i in range(20))
    assert ndcg_at_k(half, truth) == pytest.approx(sum(1 / math.log2(i + 2) for i in range(10)) / idcg)
    # an item listed twice counts once
    assert recall_at_k(["a", "a"], {"a", "b"}) == 0.5


def test_evaluate_averages_over_customers_with_truth():
    recs = pd.DataFrame({"customer_id": [1, 1, 2], "rank": [1, 2, 1], "item_id": ["x", "y", "q"],
                         "score": [1.0, 0.5, 1.0], "source": "test"})
    truth = {1: frozenset({"y"}), 2: frozenset({"q", "r"}), 3: frozenset({"s"}), 4: frozenset()}
    out = evaluate(recs, truth, k=20)
    # customer 1: recall 1, ndcg 1/log2(3); customer 2: 1/2, ndcg 1/(1 + 1/log2(3)); 3: no list -> 0; 4 skipped
    assert out["customers"] == 3
    assert out["recall@20"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert out["ndcg@20"] == pytest.approx((1 / math.log2(3) + 1 / (1 + 1 / math.log2(3)) + 0) / 3)
    with pytest.raises(ValueError, match="already bought"):
        evaluate(recs, truth, exclude={1: frozenset({"x"})})


def test_ground_truth_protocol():
    t = lambda d: pd.Timestamp(d, tz="UTC")  # noqa: E731
    lines = make_lines([
        (1, "1", "X", t("2011-06-01")), (1, "2", "Y", t("2011-06-02")), (2, "3", "Y", t("2011-06-03")),
        (1, "4", "X", t("2011-07-05")),  # repeat
        (1, "4", "Y", t("2011-07-05")),  # repeat
        (2, "5", "X", t("2011-07-06")),  # new to customer 2, existed before
        (2, "5", "NEW", t("2011-07-06")),  # did not exist before as_of: never counted
        (3, "6", "X", t("2011-07-07")),  # customer 3 had no purchase before: not in the population
        (2, "7", "Y", t("2011-10-10")),  # after the horizon
    ])
    assert ground_truth(lines, AS_OF, 92) == {1: frozenset({"X", "Y"}), 2: frozenset({"X"})}
    assert ground_truth(lines, AS_OF, 92, new_only=True) == {2: frozenset({"X"})}
    assert ground_truth(lines, AS_OF, 3) == {}


# ---------------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("name", ["recommender", "ease", "als"])
def test_cluster_held_out_item_comes_first(fitted, cluster, name):
    _, group_a, group_b = cluster
    model = fitted[name]
    disc = items_of(model.recommend([1, 2], k=5, new_only=True), 1)
    assert disc[0] in {"A6", "A7", "A8"}
    assert set(disc[:3]) == {"A6", "A7", "A8"}
    rec = items_of(model.recommend([1, 101], k=5), 101)
    assert not set(rec[:3]) & group_a


def test_co_purchase_stays_in_its_cluster(fitted, cluster):
    _, group_a, group_b = cluster
    model = fitted["recommender"]
    sim = model.similar_items("A1", k=5)
    assert set(sim["item_id"][:3]) <= group_a - {"A1"}
    assert (sim["source"][:3] == "co_purchase").all()
    sess = model.for_session(["B1", "B2"], k=5)
    assert set(sess["item_id"][:3]) <= group_b - {"B1", "B2"}
    assert sess["reason_data"][0]["anchor_item"] in {"B1", "B2"}


def test_similar_items_returns_the_partner_first():
    rows, inv = [], 0
    for c in range(1, 9):
        for w in range(6):
            inv += 1
            ts = START + pd.Timedelta(days=7 * w + c)
            rows += [(c, str(inv), "P", ts), (c, str(inv), "Q", ts), (c, str(inv), f"N{(c + w) % 10}", ts)]
    lines = make_lines(rows)
    model = Recommender(**FAST).fit(lines, START + pd.Timedelta(days=60))
    sim = model.similar_items("P", k=3)
    assert sim["item_id"][0] == "Q" and sim["source"][0] == "co_purchase"
    assert model.similar_items("Q", k=3)["item_id"][0] == "P"
    # an item nobody bought: the popular items, and the session list still fills k
    assert (model.similar_items("UNKNOWN", k=3)["source"] == "popular").all()
    assert len(model.for_session(["UNKNOWN"], k=4)) == 4


def weekly_buyer_lines() -> pd.DataFrame:
    """Customer 7 re-buys X every 7 days; other items once each. Others buy assorted items."""
    rows, inv = [], 0
    rng = np.random.default_rng(3)
    for w in range(26):
        inv += 1
        ts = START + pd.Timedelta(days=7 * w)
        rows.append((7, str(inv), "X", ts))
        if w % 3 == 0:
            rows.append((7, str(inv), f"O{w}", ts))
        for c in range(20, 30):
            inv += 1
            for it in rng.choice([f"O{i}" for i in range(30)], size=3, replace=False):
                rows.append((c, str(inv), str(it), ts + pd.Timedelta(hours=c)))
    return make_lines(rows)


@pytest.mark.parametrize("model", [BuyAgainRecommender(), Recommender(**FAST)], ids=["buy_again", "recommender"])
def test_weekly_rebuy_is_recommended_first(model):
    lines = weekly_buyer_lines()
    model.fit(lines, AS_OF)
    recs = model.recommend([7], k=10)
    assert items_of(recs, 7)[0] == "X"
    top = recs.iloc[0]
    assert top["source"] == "buy_again"
    assert top["reason_data"]["typical_interval_days"] == pytest.approx(7.0)
    assert top["reason_data"]["times_bought"] == 26


def test_discovery_lists_only_new_items_and_honours_k(fitted, cluster):
    lines, _, _ = cluster
    model = fitted["recommender"]
    customers = sorted(lines["customer_id"].unique())
    seen = seen_items(lines, AS_OF)
    for k in (1, 3, 7):
        disc = model.discovery(customers, k=k)
        assert disc.groupby("customer_id").size().max() <= k
        assert (disc.groupby("customer_id").size() == k).all()  # enough unseen items for everyone
        assert not any(it in seen[c] for c, it in zip(disc["customer_id"], disc["item_id"]))
        assert disc.groupby("customer_id")["rank"].apply(lambda r: list(r) == list(range(1, len(r) + 1))).all()


def test_cold_start_gets_popular_items(fitted):
    model = fitted["recommender"]
    recs = model.recommend([999_999], k=4)
    assert (recs["source"] == "popular").all() and len(recs) == 4
    assert recs["item_id"].tolist() == model.popular(k=4)["item_id"].tolist()


def test_renaming_customers_gives_the_same_lists(cluster):
    lines, _, _ = cluster
    ids = np.sort(lines["customer_id"].unique())
    perm = dict(zip(ids, np.random.default_rng(1).permutation(ids + 5000)))
    renamed = lines.assign(customer_id=lines["customer_id"].map(perm).astype("int64"))
    for make in (lambda: Recommender(**FAST), lambda: ALSRecommender(factors=8, iterations=10)):
        a = make().fit(lines, AS_OF)
        b = make().fit(renamed, AS_OF)
        for new_only in (False, True):
            ra = a.recommend(ids, k=6, new_only=new_only)
            rb = b.recommend([perm[c] for c in ids], k=6, new_only=new_only)
            rb = rb.assign(customer_id=rb["customer_id"].map({v: k for k, v in perm.items()}))
            pd.testing.assert_frame_equal(ra[["customer_id", "rank", "item_id", "source"]],
                                          rb[["customer_id", "rank", "item_id", "source"]])
            np.testing.assert_allclose(ra["score"], rb["score"], rtol=1e-6)


# ------------------------------------------------------------------------------- contract, storage


@pytest.mark.parametrize("name", ["recommender", "ease", "als", "buy_again", "popularity"])
def test_contract_and_save_load_round_trip(fitted, cluster, tmp_path, name):
    lines, _, _ = cluster
    model = fitted[name]
    customers = [1, 2, 101, 999_999]
    for new_only in (False, True):
        recs = model.recommend(customers, k=5, new_only=new_only)
        assert list(recs.columns) == REC_COLUMNS
        assert recs.groupby("customer_id").size().to_dict() == {c: 5 for c in customers}
        assert recs["reason_data"].map(lambda d: isinstance(d, dict) and json.loads(json.dumps(d)) == d).all()
    path = model.save(tmp_path / name)
    assert not list(path.glob("*.pkl")) and not list(path.glob("*.pickle"))
    files = sorted((path / "arrays").glob("*.npy"))
    assert files and all(np.load(f, allow_pickle=False).dtype != object for f in files)
    again = load_model(path)
    assert type(again) is type(model) and again.get_params() == json.loads(json.dumps(model.get_params()))
    for new_only in (False, True):
        pd.testing.assert_frame_equal(model.recommend(customers, k=5, new_only=new_only),
                                      again.recommend(customers, k=5, new_only=new_only))
    meta = json.loads((path / "meta.json").read_text())
    meta["format_version"] += 1
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FormatVersionError, match="format version"):
        load_model(path)
    with pytest.raises(FormatVersionError, match="format version"):
        type(model).load(path)


def test_arrays_are_memory_mapped_and_the_previous_format_still_loads(fitted, tmp_path):
    """Format 2 maps each array from its own file (service workers share the pages); a format-1
    directory (one arrays.npz) loads into memory with the same lists."""
    import shutil

    model = fitted["recommender"]
    path = model.save(tmp_path / "v2")
    again = load_model(path)
    assert isinstance(again.sources.U.base, np.memmap) and isinstance(again.sources.h.indices.base, np.memmap)
    old = tmp_path / "v1"
    shutil.copytree(path, old)
    np.savez(old / "arrays.npz", **{f.stem: np.load(f) for f in (old / "arrays").glob("*.npy")})
    shutil.rmtree(old / "arrays")
    meta = json.loads((old / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps({**meta, "format_version": 1}))
    v1 = load_model(old)
    assert not isinstance(v1.sources.U.base, np.memmap)
    customers = [1, 2, 101, 999_999]
    for new_only in (False, True):
        pd.testing.assert_frame_equal(again.recommend(customers, k=5, new_only=new_only),
                                      v1.recommend(customers, k=5, new_only=new_only))


def test_recommender_extra_lists_survive_save_load(fitted, tmp_path):
    model = fitted["recommender"]
    again = load_model(model.save(tmp_path / "m"))
    pd.testing.assert_frame_equal(model.similar_items("A1", k=4), again.similar_items("A1", k=4))
    pd.testing.assert_frame_equal(model.for_session(["A1", "B2"], k=4), again.for_session(["A1", "B2"], k=4))
    pd.testing.assert_frame_equal(model.popular(k=4, days=60), again.popular(k=4, days=60))


def test_tree_ensemble_matches_sklearn():
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 4))
    X[rng.random(X.shape) < 0.1] = np.nan
    y = ((np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) * 0.5 + rng.normal(size=600) * 0.3) > 0).astype(int)
    clf = HistGradientBoostingClassifier(max_iter=20, max_leaf_nodes=7, early_stopping=False).fit(X, y)
    ens = TreeEnsemble.from_sklearn(clf)
    again = TreeEnsemble.from_arrays(ens.to_arrays("t_"), "t_")
    expected = clf.predict_proba(X)[:, 1]
    np.testing.assert_allclose(again.predict_proba(X), expected, rtol=1e-9)
    np.testing.assert_allclose(again.predict_proba(X[:1]), expected[:1], rtol=1e-9)  # one row, as a request scores
    np.testing.assert_allclose(1 / (1 + np.exp(-again.predict_raw(X, block=7))), expected, rtol=1e-9)  # rows in blocks


def test_unfitted_and_unknown_directories_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(FormatVersionError):
        load_model(tmp_path)
    with pytest.raises(RuntimeError, match="not fitted"):
        Recommender().recommend([1])


def test_precomputed_lists_equal_the_scored_lists_and_survive_save_load(cluster, tmp_path):
    lines, _, _ = cluster
    model = Recommender(**FAST).fit(lines, AS_OF)
    customers = np.sort(lines["customer_id"].unique())
    scored = {new: model.recommend(customers, k=6, new_only=new) for new in (False, True)}
    model.precompute(k=10)
    again = load_model(model.save(tmp_path / "m"))
    for new in (False, True):
        for m in (model, again):
            pd.testing.assert_frame_equal(m.recommend(customers, k=6, new_only=new), scored[new])
    items, _, _ = again.ranked(0)
    assert len(items) == 10  # topped up with popular items
    assert again.ranked(-1) is None  # unknown customers have no list


def test_anonymous_baskets_use_the_session_model_and_keep_it_on_save_load(cluster, tmp_path):
    from patron.training.recs.session import SessionModel, SessionParams

    lines, group_a, group_b = cluster
    model = Recommender(**FAST).fit(lines, AS_OF)
    model.set_session(SessionModel(SessionParams(dim=8, epochs=30, seed=0)).fit(lines, AS_OF))
    got = model.for_session(["A1", "A2"], k=4)
    assert set(got["item_id"]) <= group_a - {"A1", "A2"}  # the basket's own group, never the basket
    again = load_model(model.save(tmp_path / "m"))
    assert again.session is not None
    pd.testing.assert_frame_equal(again.for_session(["A1", "A2"], k=4), got)


def test_postage_and_fees_are_never_recommended(tmp_path):
    """Regression: foreign customers pay postage with every order, so the model learned to
    recommend POSTAGE, which nobody chooses."""
    rows = []
    for c in range(1, 9):
        for week in range(20):
            inv = f"{c:02d}{week:03d}"
            ts = START + pd.Timedelta(days=7 * week + c % 3)
            rows += [(c, inv, "POST", ts), (c, inv, f"P{(week + c) % 5}", ts), (c, inv, f"Q{week % 3}", ts)]
    lines = make_lines(rows)
    model = Recommender(**FAST).fit(lines, AS_OF)
    model.precompute(k=6)
    for new_only in (False, True):
        assert "POST" not in set(model.recommend([1, 2, 99], k=6, new_only=new_only)["item_id"])
    assert "POST" not in set(model.similar_items("P1", k=6)["item_id"])
    assert "POST" not in set(model.for_session(["P1"], k=6)["item_id"]) | set(model.popular(k=6)["item_id"])


def test_ease_learns_on_a_capped_item_set_the_most_bought_items() -> None:
    """EASE inverts a dense items x items matrix: past the cap it keeps the most-bought items."""
    from patron.training.recs.baselines import ease_columns
    from patron.training.recs.history import History

    # item "I<k>" has k buyers (k = 1..6)
    rows = [(c, f"{k}-{c}", f"I{k}", START + pd.Timedelta(days=c)) for k in range(1, 7) for c in range(k)]
    h = History.from_lines(make_lines(rows), AS_OF)
    assert h.items[ease_columns(h, min_buyers=1, max_items=100)].tolist() == [f"I{k}" for k in range(1, 7)]
    assert h.items[ease_columns(h, min_buyers=3, max_items=100)].tolist() == ["I3", "I4", "I5", "I6"]
    assert h.items[ease_columns(h, min_buyers=1, max_items=2)].tolist() == ["I5", "I6"]  # in item order


def test_the_rankers_train_on_a_bounded_sample_of_customers(cluster) -> None:
    lines, _, _ = cluster
    capped = Recommender(**{**FAST, "rk_max_customers": 5}).fit(lines, AS_OF)
    full = Recommender(**FAST).fit(lines, AS_OF)
    assert capped.fit_info["train_customers"] <= 5 < full.fit_info["train_customers"]
    assert capped.fit_info["train_rows"] < full.fit_info["train_rows"]
    again = Recommender(**{**FAST, "rk_max_customers": 5}).fit(lines, AS_OF)
    assert again.fit_info == {**capped.fit_info, **{k: again.fit_info[k] for k in again.fit_info if k.startswith("seconds")}}


# ------------------------------------------------------------------------------------ top-N selection


def _stable_order(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-np.where(np.isfinite(scores), scores, -np.inf), axis=1, kind="stable")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_top_n_of_a_block_is_the_head_of_a_full_stable_sort(dtype) -> None:
    """Partition-based selection, ties included (few distinct scores, -0.0 and 0.0 alike), equals
    sorting every row, for the key sort of float32 scores and the per-row sort of others."""
    from patron.training.recs.topn import top_dense

    rng = np.random.default_rng(1)
    scores = (rng.integers(0, 4, (30, 50)) - 1).astype(dtype)
    scores[rng.random(scores.shape) < 0.1] = -0.0
    scores[rng.random(scores.shape) < 0.15] = np.nan
    seen = np.nonzero(rng.random(scores.shape) < 0.2)
    for cap in (1, 5, 13, 50, 80):
        for exclude in (None, seen):
            s = np.where(np.isfinite(scores), scores, -np.inf)
            if exclude is not None:
                s[exclude] = -np.inf
            order = _stable_order(s)
            expected = [(r, int(c), j) for r in range(s.shape[0]) for j, c in enumerate(order[r])
                        if j < cap and np.isfinite(s[r, c])]
            before = scores.copy()
            got = list(zip(*(a.tolist() for a in top_dense(scores, cap, exclude))))
            assert got == expected, (cap, exclude is None)
            assert np.array_equal(scores, before, equal_nan=True)  # the caller's scores are left alone
    finite = rng.standard_normal((8, 40)).astype(dtype)  # nothing to mask: selected in place, unchanged
    before = finite.copy()
    rows, cols, ranks = top_dense(finite, 5)
    assert np.array_equal(finite, before) and np.array_equal(cols.reshape(8, 5), np.argsort(-finite, axis=1, kind="stable")[:, :5])


def test_both_top_n_lists_from_one_selection_equal_two_selections() -> None:
    """The first items among all and among the unseen, from one partition, equal two partitions;
    ties, missing scores, rows that saw much and rows that saw nothing included."""
    from patron.training.recs.topn import top_dense, top_dense_both

    rng = np.random.default_rng(2)
    scores = rng.integers(0, 5, (40, 60)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    scores[3] = np.nan
    seen_mask = rng.random(scores.shape) < rng.uniform(0, 0.6, (40, 1))
    seen_mask[5] = False
    seen = np.nonzero(seen_mask)
    for cap in (1, 7, 30, 60, 100):
        every, unseen = top_dense_both(scores, cap, seen)
        for got, want in ((every, top_dense(scores, cap)), (unseen, top_dense(scores, cap, seen))):
            assert all(np.array_equal(g, w) for g, w in zip(got, want)), cap
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    every, unseen = top_dense_both(scores, 9, empty)
    assert all(np.array_equal(a, b) for a, b in zip(every, unseen))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_top_n_of_a_sparse_block_equals_that_of_its_dense_positive_entries(dtype) -> None:
    """A sparse score block (co-purchase) selects as the dense block would with every absent or
    non-positive entry left out; ties, explicit zeros, negative entries and empty rows included."""
    import scipy.sparse as sp

    from patron.training.recs.topn import top_dense_both, top_sparse_both

    rng = np.random.default_rng(3)
    dense = (rng.integers(0, 5, (25, 70)) * (rng.random((25, 70)) < 0.3)).astype(dtype)
    dense[4] = 0.0
    dense[7, :5] = -1.0  # stored, but no part of a co-purchase list
    block = sp.csr_matrix(dense)
    block.data[::7] = 0.0  # explicit zeros: stored, not positive
    seen = tuple(a.astype(np.int64) for a in np.nonzero(rng.random(dense.shape) < 0.25))
    for cap in (1, 3, 10, 70, 200):
        want = top_dense_both(np.where(block.toarray() > 0, block.toarray(), -np.inf).astype(dtype), cap, seen)
        got = top_sparse_both(block, cap, seen)
        for g, w in zip(got, want):
            assert all(np.array_equal(a, b) for a, b in zip(g, w)), cap


@pytest.mark.parametrize("n_rows", [40, 1500])  # one sort of 64-bit keys, and the general sort above 1,024 rows
def test_the_first_entries_of_each_row_are_those_a_plain_sort_gives(n_rows) -> None:
    from patron.training.recs.topn import top_entries

    rng = np.random.default_rng(5)
    n = n_rows * 6
    pairs = np.unique(np.column_stack([rng.integers(0, n_rows, n), rng.integers(0, 300, n)]), axis=0)
    rows, cols = pairs[rng.permutation(len(pairs))].T  # distinct (row, col), in no order
    values = rng.integers(0, 4, len(rows)).astype(np.float32) / 3 - np.float32(0.5)  # ties and negatives
    for cap in (1, 3, 50):
        got = top_entries(rows, cols, values, n_rows, cap)
        want = [(r, c, v) for r in range(n_rows)
                for c, v in sorted(((int(c), float(v)) for c, v in zip(cols[rows == r], values[rows == r])), key=lambda e: (-e[1], e[0]))[:cap]]
        assert list(zip(got[0].tolist(), got[1].tolist(), got[2].tolist())) == want, cap


def test_co_purchase_similarity_is_computed_block_by_block_with_the_same_answer() -> None:
    """Three baskets {a, b, c}, {a, b}, {b, d}: C(a, b) = 2, n_a = 2, n_b = 3, so s(a, b) =
    2 / sqrt(6) x 2 / (2 + 2); one item per block gives the matrix of one block."""
    from patron.training.recs.history import coded_lines
    from patron.training.recs.sources import basket_similarity

    t = pd.Timestamp("2011-01-03", tz="UTC")
    lines = make_lines([(1, "i1", "a", t), (1, "i1", "b", t), (1, "i1", "c", t), (2, "i2", "a", t), (2, "i2", "b", t),
                        (3, "i3", "b", t), (3, "i3", "d", t)])
    with coded_lines(lines, dt.datetime(2011, 2, 1, tzinfo=dt.timezone.utc)) as con:
        whole = basket_similarity(con, 4, neighbours=10, shrink=2.0)
        blocks = basket_similarity(con, 4, neighbours=10, shrink=2.0, block_pairs=1)
        top1 = basket_similarity(con, 4, neighbours=1, shrink=2.0, block_pairs=1).toarray()
    S = whole.toarray()
    assert S[0, 1] == S[1, 0] == pytest.approx(2 / math.sqrt(6) * 0.5, rel=1e-6)
    assert S[1, 3] == pytest.approx(1 / math.sqrt(3) / 3, rel=1e-6) and S[0, 3] == 0 and np.all(np.diag(S) == 0)
    assert (np.array_equal(whole.indptr, blocks.indptr) and np.array_equal(whole.indices, blocks.indices)
            and np.array_equal(whole.data, blocks.data))
    # each item keeps its most similar one
    assert [int(np.argmax(r)) for r in top1] == [int(np.argmax(r)) for r in S] and (top1 > 0).sum(axis=1).tolist() == [1, 1, 1, 1]


def test_the_first_unseen_items_of_a_global_order_and_their_ranks() -> None:
    from patron.training.recs.topn import global_unseen_rank, top_global

    rng = np.random.default_rng(2)
    n_rows, n_items = 12, 40
    order = np.argsort(-rng.integers(0, 6, n_items), kind="stable")[:30]  # 10 items outside the order
    seen_mask = rng.random((n_rows, n_items)) < 0.4
    seen = tuple(a.astype(np.int64) for a in np.nonzero(seen_mask))
    for n in (1, 4, 25):
        rows, cols, ranks = top_global(order, n_items, seen, n_rows, n)
        expected = [(r, int(i), j) for r in range(n_rows) for j, i in enumerate(i for i in order if not seen_mask[r, i]) if j < n]
        assert sorted(zip(rows.tolist(), cols.tolist(), ranks.tolist())) == sorted(expected)
    pr, pi = np.nonzero(~seen_mask)
    got = global_unseen_rank(order, n_items, seen, pr, pi)
    for r, i, g in zip(pr, pi, got):
        unseen = [x for x in order if not seen_mask[r, x]]
        assert (np.isnan(g) and i not in unseen) or unseen.index(i) == g


def test_candidates_do_not_depend_on_the_rank_cap_but_their_capped_ranks(cluster) -> None:
    """Nominations use only the first ranks, so any cap above the per-source depths gives the same
    candidates, sources and priors; rank features are the full ranks, cut at the cap."""
    from dataclasses import replace

    from patron.training.recs.sources import FEATURES, PAIR_FEATURES, Sources

    lines, _, _ = cluster
    params = Recommender(**FAST).params
    src = Sources.build(lines, pd.Timestamp(AS_OF, tz="UTC").to_pydatetime(), replace(params, rank_cap=10**6))
    rows = np.arange(src.h.n_customers)
    rank_cols = [FEATURES.index(f) for f in PAIR_FEATURES if f.endswith("rank")]
    for new_only in (False, True):
        src.p = replace(params, rank_cap=10**6)
        full = src.candidates(rows, new_only)
        src.p = replace(params, rank_cap=20)
        capped = src.candidates(rows, new_only)
        for key in ("pair_row", "item", "source", "prior"):
            np.testing.assert_array_equal(full[key], capped[key])
        other = [j for j in range(len(FEATURES)) if j not in rank_cols]
        np.testing.assert_array_equal(full["X"][:, other], capped["X"][:, other])
        assert np.nanmax(capped["X"][:, rank_cols]) == 20 < np.nanmax(full["X"][:, rank_cols])
        np.testing.assert_array_equal(np.minimum(full["X"][:, rank_cols], 20), capped["X"][:, rank_cols])


def test_a_fit_reuses_an_earlier_fits_sources_and_gives_the_same_lists(cluster) -> None:
    """The holdout candidate (fitted before as_of - label_days) holds the sources of the registered
    model's first training window: reusing them changes nothing but the time."""
    lines, _, _ = cluster
    as_of = pd.Timestamp(AS_OF, tz="UTC")
    early_as_of = as_of - pd.Timedelta(days=FAST["label_days"])
    early = Recommender(**FAST).fit(lines[lines["invoice_ts"] < early_as_of], early_as_of)
    fresh = Recommender(**FAST).fit(lines, AS_OF)
    reused = Recommender(**FAST).fit(lines, AS_OF, fitted=early)
    other = Recommender(**{**FAST, "n_als": 5}).fit(lines, AS_OF, fitted=early)
    assert (fresh.fit_info["windows_reused"], reused.fit_info["windows_reused"], other.fit_info["windows_reused"]) == (0, 1, 0)
    customers = sorted(set(lines["customer_id"]))
    for new_only in (False, True):
        a = fresh.recommend(customers, k=10, new_only=new_only)
        b = reused.recommend(customers, k=10, new_only=new_only)
        pd.testing.assert_frame_equal(a, b)


def test_baselines_fitted_on_the_candidates_history_equal_baselines_fitted_on_the_lines(fitted, cluster) -> None:
    from patron.training.recs.train import _baselines

    lines, _, _ = cluster
    model = fitted["recommender"]
    customers = sorted(set(lines["customer_id"])) + [999_999]
    shared = _baselines(model)
    assert set(shared) == {"popularity", "buy_again", "ease", "als"}
    for name, baseline in shared.items():
        assert baseline.history is model.sources.h
        own = type(baseline)().fit(lines, AS_OF)
        for new_only in (False, True):
            pd.testing.assert_frame_equal(baseline.recommend(customers, k=8, new_only=new_only),
                                          own.recommend(customers, k=8, new_only=new_only))
    # ALS with the candidate's settings takes its factors as they are: the same as fitting them again
    p = model.params
    als = ALSRecommender(factors=p.als_factors, regularization=p.als_regularization, alpha=p.als_alpha,
                         iterations=p.als_iterations, seed=p.seed)
    reused = als.fit_history(model.sources.h, factors=(model.sources.U, model.sources.V))
    refit = ALSRecommender(**als.get_params()).fit(lines, AS_OF)
    pd.testing.assert_frame_equal(reused.recommend(customers, k=8), refit.recommend(customers, k=8))


def test_extra_training_windows_only_while_a_window_brings_fewer_customers_than_the_cap(cluster) -> None:
    lines, _, _ = cluster
    windows = {**FAST, "extra_windows": ((20, 20), (10, 10))}
    assert Recommender(**windows).fit(lines, AS_OF).fit_info["train_windows"] == 3
    capped = Recommender(**{**windows, "rk_max_customers": 5}).fit(lines, AS_OF)
    assert (capped.fit_info["train_windows"], capped.fit_info["train_customers"]) == (1, 5)


@pytest.mark.parametrize("name", ["recommender", "ease", "buy_again"])
def test_lists_without_reasons_are_the_same_lists(fitted, name) -> None:
    model = fitted[name]
    customers = [1, 2, 101, 999_999]
    personal = 0
    for new_only in (False, True):
        full = model.recommend(customers, k=6, new_only=new_only)
        bare = model.recommend(customers, k=6, new_only=new_only, reasons=False)
        pd.testing.assert_frame_equal(full.drop(columns="reason_data"), bare.drop(columns="reason_data"))
        own = bare[bare["source"] != "popular"]
        assert (own["reason_data"].map(len) == 0).all()
        personal += len(own)
    assert personal > 0


@pytest.mark.parametrize("name", ["recommender", "ease", "als", "buy_again", "popularity"])
def test_both_lists_from_one_pass_equal_each_list_asked_alone(fitted, name) -> None:
    model = fitted[name]
    customers = [1, 2, 5, 101, 107, 999_999]
    everything, discovery = model.lists(customers, k=6)
    pd.testing.assert_frame_equal(everything, model.recommend(customers, k=6, reasons=False))
    pd.testing.assert_frame_equal(discovery, model.recommend(customers, k=6, new_only=True, reasons=False))
    assert set(everything["customer_id"]) == set(customers)


def test_a_holdout_scored_on_a_sample_counts_only_the_sampled_customers(fitted, cluster) -> None:
    from patron import sampling
    from patron.training.recs.eval import evaluate_model, population

    lines, _, _ = cluster
    holdout = pd.Timestamp(AS_OF, tz="UTC") - pd.Timedelta(days=40)
    model = BuyAgainRecommender().fit(lines, holdout)
    pop = population(lines, holdout)
    sample, share = sampling.sample_customers(pop, 12, seed=0)
    assert share == 0.5 and 0 < len(sample) < len(pop) and set(sample) <= set(pop)
    whole = evaluate_model(model, lines, holdout, 30, k=5)
    part = evaluate_model(model, lines, holdout, 30, k=5, customers=sample)
    truth = {c: t for c, t in ground_truth(lines, holdout, 30).items() if c in set(sample.tolist())}
    assert part["customers"] == len(truth) < whole["customers"]
    assert part["recall@5"] == pytest.approx(evaluate(model.recommend(sample, k=5), truth, 5)["recall@5"])


def test_lines_in_any_order_give_the_same_history(cluster) -> None:
    from patron.training.recs.history import History

    lines, _, _ = cluster
    shuffled = lines.sample(frac=1.0, random_state=3)
    a, b = History.from_lines(lines, AS_OF).to_arrays(), History.from_lines(shuffled, AS_OF).to_arrays()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_matrix_of_some_customers_is_the_rows_of_the_whole_one(cluster) -> None:
    from patron.training.recs.history import History

    lines, _, _ = cluster
    h = History.from_lines(lines, AS_OF)
    rows = np.random.default_rng(4).integers(0, h.n_customers, 40)
    rows[:3] = [rows[5], h.n_customers - 1, 0]  # repeats and both ends
    for got, want in ((h.rows_matrix(rows), h.matrix()[rows]),
                      (h.rows_matrix(rows, h.qty[h.pair_positions(rows)], np.float64), h.matrix(h.qty, np.float64)[rows])):
        assert got.dtype == want.dtype and np.array_equal(got.toarray(), want.toarray())
    assert h.rows_matrix(np.zeros(0, np.int64)).shape == (0, h.n_items)


def test_a_data_folder_gives_the_history_and_truth_of_its_valid_lines_without_a_frame_of_them(tmp_path) -> None:
    """The recommender reads a data folder's committed lines by DuckDB: the same history, sources
    and holdout truth as the frame of valid lines, returns and cancellations left out."""
    from conftest import line, write_raw

    from patron.features.ingest import ingest
    from patron.training.data import load_lines
    from patron.training.recs.eval import holdout_truth
    from patron.training.recs.history import History
    from patron.training.recs.lines import OrderLines
    from patron.training.recs.params import RecParams
    from patron.training.recs.sources import Sources

    rows = [line("1001", "A", 2, "2011-01-03 10:00", 1.5, "11"), line("1001", "B", 1, "2011-01-03 10:00", 3.0, "11"),
            line("1002", "A", 1, "2011-01-10 09:00", 1.5, "12"), line("1003", "C", 4, "2011-01-12 12:00", 0.5, "12"),
            line("C1004", "B", -1, "2011-01-13 12:00", 3.0, "11"),  # a cancellation: not a purchase
            line("1005", "B", 1, "2011-02-02 08:00", 3.0, "12"), line("1006", "A", 1, "2011-02-03 08:00", 1.5, "11"),
            line("1007", "POST", 1, "2011-02-04 08:00", 18.0, "13"), line("1008", "D", 1, "2011-02-05 08:00", 2.0, "13")]
    data = tmp_path / "data"
    ingest([write_raw(tmp_path / "raw.csv", rows)], data)
    t = dt.datetime(2011, 2, 1, tzinfo=dt.timezone.utc)
    folder, frame = OrderLines(data), load_lines(data)
    a, b = History.from_lines(folder, t), History.from_lines(frame, t)
    assert list(a.customers) == [11, 12] and list(a.items) == ["A", "B", "C"]  # first invoice order; sorted items
    assert a.matrix(a.n_inv).toarray().tolist() == [[1, 1, 0], [1, 0, 1]]  # the cancellation bought nothing
    assert all(np.array_equal(x, y) for x, y in zip(a.to_arrays().values(), b.to_arrays().values()))
    p = RecParams(als_factors=2, als_iterations=2, ease_min_buyers=1)
    sa, sb = Sources.build(folder, t, p).to_arrays("x_"), Sources.build(frame, t, p).to_arrays("x_")
    assert all(np.array_equal(sa[k], sb[k], equal_nan=sa[k].dtype.kind == "f") for k in sa)
    split = holdout_truth(folder, t, 30)
    assert split.truth == {11: frozenset({"A"}), 12: frozenset({"B"})}  # D: nobody bought it before
    assert split.truth_new == {12: frozenset({"B"})} and split.seen == {11: frozenset({"A", "B"}), 12: frozenset({"A", "C"})}
    again = holdout_truth(frame, t, 30)
    assert (split.truth, split.truth_new, split.seen) == (again.truth, again.truth_new, again.seen)
    assert list(split.customers) == list(again.customers) == [11, 12]
    assert not OrderLines(data, end=dt.datetime(2011, 1, 1, tzinfo=dt.timezone.utc)).has_products()
