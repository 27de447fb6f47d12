"""Basket completion (patron.training.recs.session) on tiny baskets with a known answer.

Items A, B, C are always bought together, and so are X, Y, Z; P is the shop's best seller, bought
with Q or R. A model that learned anything must complete {A, B} with C, not with the popular P.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from patron.training.recs.session import (
    ARRAYS_FILE,
    META_FILE,
    Baskets,
    NotFittedError,
    SessionFormatError,
    SessionModel,
    SessionParams,
    _epoch_batches,
    epoch_sample,
)

REPO = Path(__file__).resolve().parents[1]
AS_OF = dt.date(2011, 6, 1)
START = pd.Timestamp("2011-03-01", tz="UTC")
# small and fast for a dozen items; the defaults are sized for a shop of thousands
FAST: dict[str, Any] = dict(dim=8, epochs=60, lr=0.05, weight_decay=0.0, batch_targets=64, keep_min=1.0, half_life_days=None, seed=7)
ABC, XYZ = ("A", "B", "C"), ("X", "Y", "Z")


def make_lines(baskets: list[tuple[tuple[str, ...], int | None, pd.Timestamp]], line_class: str | None = None,
               first: int = 500000) -> pd.DataFrame:
    """(items, customer or None for a guest, time) per invoice -> order lines as load_lines gives them,
    invoices numbered from ``first``."""
    rows = []
    for n, (items, customer, ts) in enumerate(baskets):
        cls = line_class or ("sale" if customer is not None else "guest")
        for item in items:
            rows.append((customer, f"{first + n}", item, 1, 1.0, 1.0, ts, cls))
    df = pd.DataFrame(rows, columns=["customer_id", "invoice_no", "item_id", "quantity", "unit_price", "amount",
                                     "invoice_ts", "line_class"])
    df["customer_id"] = df["customer_id"].astype("Int64")
    df["invoice_ts"] = pd.to_datetime(df["invoice_ts"], utc=True).astype("datetime64[us, UTC]")
    return df.sort_values(["invoice_ts", "invoice_no"], kind="stable").reset_index(drop=True)


def checkerboard() -> pd.DataFrame:
    """20 invoices of A+B+C by known customers, 20 of X+Y+Z by guests, 60 of the best seller P with
    Q or R, spread over three months before AS_OF."""
    baskets: list[tuple[tuple[str, ...], int | None, pd.Timestamp]] = []
    for n in range(20):
        baskets.append((ABC, 1000 + n % 5, START + pd.Timedelta(hours=20 * n)))
        baskets.append((XYZ, None, START + pd.Timedelta(hours=20 * n + 3)))
    for n in range(60):
        baskets.append((("P", "Q" if n % 2 else "R"), 2000 + n % 7, START + pd.Timedelta(hours=7 * n + 1)))
    return make_lines(baskets)


@pytest.fixture(scope="module")
def lines() -> pd.DataFrame:
    return checkerboard()


@pytest.fixture(scope="module")
def model(lines: pd.DataFrame) -> SessionModel:
    return SessionModel(**FAST).fit(lines, AS_OF)


def test_completes_the_basket_with_the_missing_item(model: SessionModel) -> None:
    recs = model.recommend(["A", "B"], k=5)
    assert recs[0][0] == "C"
    assert recs[0][1] > 0.9  # the model is sure, not just slightly ahead of the best seller P
    assert not {"A", "B"} & {item for item, _ in recs}


def test_ranks_the_basket_group_above_other_items(model: SessionModel) -> None:
    recs = model.recommend(["X"], k=20)
    items = [item for item, _ in recs]
    assert set(items[:2]) == {"Y", "Z"}  # guests' baskets teach the model too
    assert "X" not in items
    score = dict(recs)
    assert min(score["Y"], score["Z"]) > max(score[i] for i in ("A", "B", "C", "P"))


def test_scores_are_probabilities_best_first(model: SessionModel) -> None:
    recs = model.recommend(["P"], k=20)
    assert len(recs) == len(model.item_ids) - 1  # every other item, and no more, when k is larger
    probs = [s for _, s in recs]
    assert probs == sorted(probs, reverse=True)
    assert 0.0 < sum(probs) <= 1.0 + 1e-6
    assert {recs[0][0], recs[1][0]} == {"Q", "R"}
    full = model.scores(["P"])
    assert full is not None and full.sum() == pytest.approx(1.0, abs=1e-5)


def test_unknown_items_are_ignored(model: SessionModel) -> None:
    assert model.recommend(["A", "NOPE", "B", "A"], k=4) == model.recommend(["A", "B"], k=4)
    assert model.recommend(["NOPE", "ALSO-NOPE"]) == []
    assert model.recommend([]) == []
    assert model.scores(["NOPE"]) is None


def test_excluded_items_are_never_returned(model: SessionModel) -> None:
    recs = model.recommend(["A"], k=3, exclude={"B", "NOPE"})
    assert recs[0][0] == "C"
    assert "B" not in [item for item, _ in recs] and len(recs) == 3
    everything_else = set(model.item_ids) - {"A"}
    assert model.recommend(["A"], k=5, exclude=everything_else) == []


def test_k_must_be_positive(model: SessionModel) -> None:
    with pytest.raises(ValueError, match="k must be at least 1, got 0"):
        model.recommend(["A"], k=0)


def test_learns_only_from_lines_before_as_of(lines: pd.DataFrame, model: SessionModel) -> None:
    # after AS_OF, A is suddenly bought with a new item W: the model fitted as of AS_OF cannot know
    late = make_lines([(("A", "W"), 1, pd.Timestamp(AS_OF, tz="UTC") + pd.Timedelta(hours=h)) for h in range(0, 50, 5)],
                      first=600000)
    both = pd.concat([lines, late], ignore_index=True)
    refit = SessionModel(**FAST).fit(both, AS_OF)
    assert refit.recommend(["W"]) == []
    np.testing.assert_array_equal(refit.in_emb, model.in_emb)
    np.testing.assert_array_equal(refit.out_emb, model.out_emb)
    # and a date means midnight UTC
    at_midnight = SessionModel(**FAST).fit(lines, dt.datetime(2011, 6, 1, tzinfo=dt.timezone.utc))
    np.testing.assert_array_equal(at_midnight.out_bias, model.out_bias)


def test_returns_service_lines_and_bad_rows_do_not_form_baskets(lines: pd.DataFrame, model: SessionModel) -> None:
    ts = START + pd.Timedelta(days=10)
    noise = pd.concat([
        make_lines([(("A", "X"), 1, ts)], line_class="return", first=700000),
        make_lines([(("A", "POST"), 1, ts)], line_class="non_product", first=700001),
        make_lines([(("B", "Y"), 1, ts)], first=700002).assign(quantity=-2),
        make_lines([(("C", "Z"), 1, ts)], first=700003).assign(item_id=[None, "Z"]),
    ], ignore_index=True)
    noisy = pd.concat([lines, noise], ignore_index=True)
    refit = SessionModel(**FAST).fit(noisy, AS_OF)
    assert list(refit.item_ids) == list(model.item_ids)
    np.testing.assert_array_equal(refit.in_emb, model.in_emb)


def test_items_never_in_a_basket_with_another_item_are_unknown() -> None:
    t = START
    lines = make_lines([(("A", "B"), 1, t), (("A", "B"), 2, t + pd.Timedelta(hours=1)), (("SOLO",), 3, t)])
    model = SessionModel(**FAST).fit(lines, AS_OF)
    assert list(model.item_ids) == ["A", "B"]
    assert model.recommend(["SOLO"]) == []
    assert model.recommend(["A"]) == [("B", pytest.approx(1.0, abs=1e-4))]


def test_same_seed_same_model_other_seed_same_answer(lines: pd.DataFrame, model: SessionModel) -> None:
    again = SessionModel(**FAST).fit(lines, AS_OF)
    for name in ("in_emb", "out_emb", "out_bias"):
        np.testing.assert_array_equal(getattr(again, name), getattr(model, name))
    assert again.recommend(["A", "B"], k=8) == model.recommend(["A", "B"], k=8)
    other = SessionModel(**{**FAST, "seed": 8}).fit(lines, AS_OF)
    assert other.in_emb is not None and model.in_emb is not None
    assert not np.array_equal(other.in_emb, model.in_emb)
    assert other.recommend(["A", "B"])[0][0] == "C"


def test_save_load_round_trip(tmp_path: Path, model: SessionModel) -> None:
    model.save(tmp_path / "m")
    loaded = SessionModel.load(tmp_path / "m")
    for basket in (["A", "B"], ["X"], ["P", "Q"], ["A", "Y"]):
        assert loaded.recommend(basket, k=10) == model.recommend(basket, k=10)
    assert loaded.params == model.params
    assert loaded.as_of == pd.Timestamp("2011-06-01", tz="UTC")
    meta = json.loads((tmp_path / "m" / META_FILE).read_text())
    assert meta["format"] == "patron-session" and meta["format_version"] == 1
    assert meta["item_ids"] == ["A", "B", "C", "P", "Q", "R", "X", "Y", "Z"]
    with np.load(tmp_path / "m" / ARRAYS_FILE, allow_pickle=False) as z:
        assert sorted(z.files) == ["in_emb", "out_bias", "out_emb"]
        assert z["in_emb"].dtype == np.float32


def test_another_format_version_is_refused(tmp_path: Path, model: SessionModel) -> None:
    d = model.save(tmp_path / "m")
    meta = json.loads((d / META_FILE).read_text())
    (d / META_FILE).write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(SessionFormatError, match="format version 2, this code reads version 1"):
        SessionModel.load(d)
    (d / META_FILE).write_text(json.dumps({**meta, "format": "patron-recs"}))
    with pytest.raises(SessionFormatError, match="expected format 'patron-session', got 'patron-recs'"):
        SessionModel.load(d)
    with pytest.raises(FileNotFoundError, match="not a saved session model"):
        SessionModel.load(tmp_path / "empty")


def test_arrays_that_do_not_match_the_item_ids_are_refused(tmp_path: Path, model: SessionModel) -> None:
    d = model.save(tmp_path / "m")
    meta = json.loads((d / META_FILE).read_text())
    (d / META_FILE).write_text(json.dumps({**meta, "item_ids": meta["item_ids"][:-1]}))
    with pytest.raises(SessionFormatError, match=r"in_emb has shape \(9, 8\), expected \(8, 8\)"):
        SessionModel.load(d)


def test_serving_a_saved_model_does_not_need_torch(tmp_path: Path, model: SessionModel) -> None:
    d = model.save(tmp_path / "m")
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
        "from patron.training.recs.session import SessionModel\n"
        f"m = SessionModel.load({str(d)!r})\n"
        "print(m.recommend(['A', 'B'], k=1)[0][0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "C"


def test_unfitted_model_and_bad_parameters_are_refused() -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        SessionModel().recommend(["A"])
    with pytest.raises(ValueError, match="dim=0, keep_min=1.5"):
        SessionParams(dim=0, keep_min=1.5)
    with pytest.raises(ValueError, match="no basket with two or more distinct items before 2011-06-01"):
        SessionModel(**FAST).fit(make_lines([(("A",), 1, START)]), AS_OF)


def test_training_contexts_never_contain_their_target(lines: pd.DataFrame) -> None:
    """Leave-one-out: a target is subtracted from its basket's context exactly when it was kept,
    and every context keeps at least one other item (even with heavy context dropout)."""
    data = Baskets.build(lines, AS_OF)
    p = SessionParams(keep_min=0.0, max_basket=2, max_targets=1, batch_targets=16)
    n_targets = 0
    for bag, offsets, counts, tb, target, kept, w in _epoch_batches(data, np.ones(data.n_baskets), p, np.random.default_rng(0)):
        bounds = np.append(offsets, len(bag))
        for j, t, k in zip(tb, target, kept):
            ctx = list(bag[bounds[j]:bounds[j + 1]])
            assert k == (t in ctx)
            assert counts[j] == len(ctx) and counts[j] - k >= 1
        n_targets += len(target)
    assert n_targets == data.n_baskets  # max_targets=1: one held-out item per basket and epoch


def test_an_epoch_over_its_budget_trains_on_a_weighted_sample_of_baskets() -> None:
    """Within the budget every basket trains, unweighted by the sample and with no random draw;
    above it, the expected held-out items meet the budget, recent baskets are far more likely to
    be in, and the sample's weights estimate the full weighted loss without bias."""
    rng = np.random.default_rng(0)
    targets = rng.integers(1, 25, 5_000)
    weight = 0.5 ** (rng.uniform(0, 365, 5_000) / 60.0)
    weight /= weight.mean()
    state = rng.bit_generator.state
    assert epoch_sample(targets, weight, int(targets.sum()), rng) == (None, weight)
    assert rng.bit_generator.state == state  # nothing drawn: the same model as without a budget
    budget = int(targets.sum()) // 10
    picks = [epoch_sample(targets, weight, budget, np.random.default_rng(s)) for s in range(40)]
    kept_targets = np.array([targets[c].sum() for c, _ in picks])
    assert abs(kept_targets.mean() / budget - 1) < 0.02
    order = np.argsort(-weight)
    rate = lambda ids: np.mean([np.isin(ids, c).mean() for c, _ in picks])  # noqa: E731
    assert rate(order[:200]) > 10 * rate(order[-200:])  # recent baskets are sampled far more often
    estimate = np.mean([(w * targets).sum() for _, w in picks])
    assert abs(estimate / (weight * targets).sum() - 1) < 0.03


def test_a_large_shop_fits_on_a_bounded_sample_and_still_learns_its_baskets() -> None:
    p = {**FAST, "max_epoch_cells": 20 * 9}  # about 20 held-out items x 9 items per epoch
    model = SessionModel(**p).fit(checkerboard(), AS_OF)
    assert model.summary["examples_per_epoch"] < 60
    assert [item for item, _ in model.recommend(["A", "B"], k=1)] == ["C"]


def test_reading_baskets_keeps_within_the_duckdb_limit_and_says_so_past_it(monkeypatch) -> None:
    """The baskets are one sort of every basket line: DuckDB runs it under the batch memory limit
    (spilling to disk), and a limit too small for it ends with the step named, not a kill."""
    from patron import duck

    lines = pd.concat([checkerboard().assign(invoice_no=lambda d, k=k: d["invoice_no"] + f"-{k}") for k in range(300)])
    whole = Baskets.build(lines, AS_OF)
    monkeypatch.setenv("PATRON_DUCKDB_MEMORY_LIMIT", "1MB")
    with pytest.raises(duck.OutOfMemory, match="reading the baskets for the session model.*PATRON_DUCKDB_MEMORY_LIMIT"):
        Baskets.build(lines, AS_OF)
    monkeypatch.setenv("PATRON_DUCKDB_MEMORY_LIMIT", "64MB")
    again = Baskets.build(lines, AS_OF)
    assert whole.n_baskets == 300 * 100 and all(np.array_equal(getattr(whole, k), getattr(again, k))
                                             for k in ("items", "indptr", "indices", "age_days"))
