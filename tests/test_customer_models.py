"""Churn and LTV models on tiny data with known answers; snapshot planning and labels."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from patron.training.base import ModelCard, ModelLoadError
from patron.training.customer.churn import ChurnModel, risk_band
from patron.training.customer.ltv import LTVModel, assign_tier, tier_cutoffs
from patron.training.customer.metrics import classification_metrics, tier_table, value_metrics
from patron.training.frames import TooLittleHistoryError, plan_snapshots, windows

UTC = dt.timezone.utc


def cohorts(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Two cohorts any model separates: recent, frequent buyers stay; lapsed one-off buyers leave.

    The columns are those of the churn_v2 / ltv_v2 feature services, consistent with each other
    (the BG/NBD summary matches frequency, recency and tenure)."""
    rng = np.random.default_rng(seed)
    half = n // 2
    tenure = rng.uniform(200, 300, n)
    recency = np.r_[rng.uniform(1, 20, half), rng.uniform(150, 199, half)]
    frequency = np.r_[rng.integers(5, 30, half), rng.integers(1, 3, half)]
    aov = rng.uniform(50, 150, n)
    df = pd.DataFrame(
        {
            "recency_days": recency,
            "frequency": frequency,
            "monetary_total": frequency * aov,
            "avg_order_value": aov,
            "tenure_days": tenure,
            "mean_interorder_days": np.where(frequency > 1, (tenure - recency) / np.maximum(frequency - 1, 1), np.nan),
            "std_interorder_days": rng.uniform(1, 10, n),
            "orders_30d": np.r_[rng.integers(1, 4, half), np.zeros(half, int)],
            "orders_90d": np.r_[rng.integers(3, 9, half), np.zeros(half, int)],
            "orders_prev_90d": rng.integers(0, 4, n),
            "activity_trend": rng.uniform(-1, 1, n),
            "spend_90d": np.r_[rng.uniform(200, 800, half), np.zeros(half)],
            "spend_365d": frequency * aov,
            "avg_basket_items": rng.uniform(5, 50, n),
            "avg_basket_lines": rng.uniform(1, 10, n),
            "distinct_products": rng.integers(1, 40, n),
            "return_rate": rng.uniform(0, 0.1, n),
            "purchase_days": frequency,
            "months_active": np.minimum(frequency, 9),
            "active_weeks_13": np.r_[rng.integers(3, 10, half), np.zeros(half, int)],
            "active_weeks_26": np.r_[rng.integers(5, 20, half), np.zeros(half, int)],
            "decayed_orders_30": np.r_[rng.uniform(1, 5, half), rng.uniform(0, 0.01, half)],
            "decayed_orders_90": np.r_[rng.uniform(3, 9, half), rng.uniform(0, 0.3, half)],
            "tenure_censored": rng.integers(0, 2, n),
            "btyd_frequency": frequency - 1,
            "btyd_recency_days": np.where(frequency > 1, tenure - recency, 0.0),
            "btyd_age_days": tenure,
            "btyd_monetary": np.where(frequency > 1, aov, 0.0),
        }
    )
    df["past_spend"] = df["spend_90d"]
    df["country"] = np.where(np.arange(n) % 3 == 0, "Germany", "United Kingdom")
    df["customer_id"] = np.arange(1, n + 1)
    df["churned"] = np.r_[np.zeros(half, int), np.ones(half, int)]
    df["spend"] = np.r_[rng.uniform(500, 1000, half), np.zeros(half)]
    df["orders"] = np.r_[rng.integers(2, 6, half), np.zeros(half, int)]
    return df


def fitted_churn(seed: int = 0) -> ChurnModel:
    return ChurnModel(horizon_days=92).fit(cohorts(seed=seed), cohorts(seed=seed + 100))


def card(kind: str, service: str) -> ModelCard:
    return ModelCard(kind=kind, feature_service=service, as_of="2011-07-01T00:00:00+00:00", horizon_days=92, trained_at="now")


def test_churn_separates_two_cohorts_perfectly() -> None:
    test = cohorts(seed=1)
    model = ChurnModel(horizon_days=92).fit(cohorts(seed=0), test)
    p = model.predict_proba(test)
    assert classification_metrics(test["churned"].to_numpy(), p, probabilities=True)["roc_auc"] == pytest.approx(1.0)
    assert (risk_band(p[test["churned"] == 1]) == "high").mean() > 0.9


def test_a_more_recent_purchase_never_raises_churn_risk() -> None:
    model = fitted_churn()
    base = cohorts(seed=2)
    for delta in (1.0, 10.0, 60.0):
        fresher = base.assign(recency_days=(base["recency_days"] - delta).clip(lower=0))
        assert np.all(model.predict_proba(fresher) <= model.predict_proba(base) + 1e-12)


def test_renaming_customers_changes_no_score() -> None:
    model = fitted_churn()
    test = cohorts(seed=3)
    renamed = test.assign(customer_id=test["customer_id"] + 10_000)
    assert np.array_equal(model.predict_proba(test), model.predict_proba(renamed))


def test_reason_codes_name_recency_for_a_lapsed_customer() -> None:
    model = fitted_churn()
    lapsed = cohorts(seed=4).iloc[[-1]]
    reasons = model.reasons(lapsed)[0]
    assert reasons and reasons[0]["effect"] > 0
    assert {"recency_days", "bg_p_alive", "orders_90d", "orders_30d", "frequency", "monetary_total"} & {r["feature"] for r in reasons}


def test_churn_model_round_trips_and_refuses_a_mismatch(tmp_path: Path) -> None:
    model = fitted_churn()
    model.save(tmp_path / "m", card("churn", "churn_v2"))
    again = ChurnModel.load(tmp_path / "m")
    test = cohorts(seed=5)
    assert np.array_equal(model.predict_proba(test), again.predict_proba(test))
    with pytest.raises(ModelLoadError, match="trained on feature service churn_v2, the store provides churn_v3"):
        ChurnModel.load(tmp_path / "m", feature_service="churn_v3")
    (tmp_path / "m" / "trees.skops").write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="corrupt model file"):
        ChurnModel.load(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model_card.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "m" / "model_card.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="model format 99"):
        ChurnModel.load(tmp_path / "m")


def test_label_free_churn_follows_p_alive() -> None:
    frame = cohorts(seed=7)
    model = ChurnModel(horizon_days=92).fit_label_free(frame)
    p = model.predict_proba(frame)
    f = model.prepare(frame)
    alive, orders = f["bg_p_alive"].to_numpy(), f["bg_expected_orders"].to_numpy()
    # P(no order) = P(dead) + P(alive) * exp(-expected orders of an alive customer)
    assert p == pytest.approx(1 - alive * (1 - np.exp(-orders / alive)))
    assert p[frame["churned"] == 1].min() > p[frame["churned"] == 0].max()


def test_a_customer_without_features_gets_a_score_not_an_error() -> None:
    model = fitted_churn()
    blank = pd.DataFrame({"customer_id": [999], "country": [""]})
    for c in cohorts(n=2).columns:
        if c not in blank:
            blank[c] = np.nan
    p = model.predict_proba(blank)
    assert np.isfinite(p).all() and 0 <= p[0] <= 1


def test_tiers_on_their_boundaries() -> None:
    cutoffs = [100.0, 50.0, 10.0]
    assert assign_tier([100.0, 99.99, 50.0, 10.0, 9.99, 0.0], cutoffs).tolist() == [
        "platinum", "gold", "gold", "silver", "bronze", "bronze"]
    values = np.arange(1, 101, dtype=float)
    cut = tier_cutoffs(values)  # 5% / 15% / 30% / 50%
    tiers = assign_tier(values, cut)
    assert [int((tiers == t).sum()) for t in ("platinum", "gold", "silver", "bronze")] == [5, 15, 30, 50]
    with pytest.raises(ValueError, match="summing to 1"):
        tier_cutoffs(values, (0.5, 0.5, 0.5, 0.5))


def test_value_metrics_by_hand() -> None:
    actual = np.array([0, 0, 0, 0, 0, 0, 0, 0, 10, 90.0])
    m = value_metrics(actual, np.arange(10, dtype=float))
    assert m["top10_revenue_share"] == pytest.approx(0.9)  # the top-scored customer spent 90 of 100
    table = tier_table(actual, np.array(["bronze"] * 8 + ["gold", "platinum"]))
    assert table["mean_actual_spend"].tolist() == [90.0, 10.0, 0.0]


def test_ltv_ranks_the_spenders_first(tmp_path: Path) -> None:
    test = cohorts(seed=6)
    model = LTVModel(horizon_days=92).fit(cohorts(), test)
    pred = model.predict(test, dt.datetime(2011, 7, 1, tzinfo=UTC))
    assert value_metrics(test["spend"].to_numpy(), pred["predicted_value"].to_numpy())["top10_revenue_share"] > 0.15
    active = pred.iloc[:200]
    assert (active["predicted_orders"] > 1).mean() > 0.9
    assert active["expected_next_order_date"].notna().all()
    model.set_tiers(pred["predicted_value"].to_numpy())
    model.save(tmp_path / "ltv", card("ltv", "ltv_v2"))
    again = LTVModel.load(tmp_path / "ltv")
    pd.testing.assert_frame_equal(again.predict(test, dt.datetime(2011, 7, 1, tzinfo=UTC)), model.predict(test, dt.datetime(2011, 7, 1, tzinfo=UTC)))


def test_snapshot_plan_keeps_every_label_window_before_as_of() -> None:
    first = dt.datetime(2010, 12, 1, 8, tzinfo=UTC)
    plan = plan_snapshots(first, dt.date(2011, 7, 1), 92)
    assert plan.holdout == dt.datetime(2011, 3, 25, tzinfo=UTC)  # 14 weekly steps back: 98 >= 92 days
    assert all(t + dt.timedelta(days=92) <= dt.datetime(2011, 7, 1, tzinfo=UTC) for t in plan.all)
    assert all(t >= first + dt.timedelta(days=28) for t in plan.train)
    assert [(b - a).days for a, b in zip(plan.all, plan.all[1:])] == [7] * len(plan.train)  # every week trains
    with pytest.raises(TooLittleHistoryError, match="first order is on 2011-05-01"):
        plan_snapshots(dt.datetime(2011, 5, 1, tzinfo=UTC), dt.date(2011, 7, 1), 92)
    with pytest.raises(TooLittleHistoryError, match="none is left to train on"):  # a holdout but no training week
        plan_snapshots(dt.datetime(2011, 2, 24, tzinfo=UTC), dt.date(2011, 7, 1), 92)


def test_labels_count_only_the_window() -> None:
    ts = pd.to_datetime(["2011-01-01", "2011-01-10", "2011-02-01", "2011-05-01"], utc=True)
    lines = pd.DataFrame({"customer_id": [1, 1, 2, 1], "invoice_no": ["a", "b", "c", "d"], "amount": [10.0, 20.0, 5.0, 99.0], "invoice_ts": ts})
    t = dt.datetime(2011, 1, 5, tzinfo=UTC)
    w = windows(lines, [t], 20).frame.set_index("customer_id")  # [5 Jan, 25 Jan): not 1 Feb, not 1 May
    assert w.index.tolist() == [1]  # the population: customer 2 had not bought before 5 Jan
    assert w.loc[1, "spend"] == 20.0 and w.loc[1, "orders"] == 1 and w.loc[1, "churned"] == 0
    assert w.loc[1, "past_spend"] == 10.0  # [16 Dec, 5 Jan)
    later = windows(lines, [dt.datetime(2011, 2, 10, tzinfo=UTC)], 20).frame.set_index("customer_id")
    assert later.loc[2, "spend"] == 0.0 and later.loc[2, "churned"] == 1 and later.loc[2, "past_spend"] == 5.0
    assert later.loc[1, "churned"] == 1 and later.loc[1, "past_spend"] == 0.0  # 10 Jan is 31 days before


def test_sampling_keeps_whole_customers_and_bounds_the_rows() -> None:
    rng = np.random.default_rng(3)
    n = 400
    ts = pd.Timestamp("2011-01-01", tz="UTC") + pd.to_timedelta(rng.uniform(0, 200, 4 * n), unit="D")
    lines = pd.DataFrame({"customer_id": np.tile(np.arange(n), 4), "invoice_no": [f"i{k}" for k in range(4 * n)],
                          "amount": rng.uniform(1, 50, 4 * n), "invoice_ts": ts})
    snaps = [dt.datetime(2011, 4, 1, tzinfo=UTC) + dt.timedelta(days=7 * k) for k in range(6)]
    full = windows(lines, snaps, 30)
    assert full.fraction == 1.0 and len(full.frame) == full.population_rows
    part = windows(lines, snaps, 30, max_rows=full.population_rows // 3)
    assert part.population_rows == full.population_rows and 0.2 < part.fraction < 0.45
    assert len(part.frame) <= 1.2 * full.population_rows // 3
    kept = set(part.frame["customer_id"])
    # whole customers: every snapshot of a kept customer is there, with the same values as unsampled
    same = full.frame[full.frame["customer_id"].isin(kept)].reset_index(drop=True)
    pd.testing.assert_frame_equal(part.frame.reset_index(drop=True), same)
    again = windows(lines, snaps, 30, max_rows=full.population_rows // 3).frame
    pd.testing.assert_frame_equal(again, part.frame)  # the same customers every time
    assert set(windows(lines, snaps, 30, max_rows=full.population_rows // 3, seed=1).frame["customer_id"]) != kept


def test_the_fast_scorers_give_scikit_learns_numbers() -> None:
    """The request path scores with plain arrays; they must agree with the fitted estimators."""
    from patron.training.customer.inputs import log_features, tree_features, with_history

    test = cohorts(seed=11)
    churn = fitted_churn()
    f = churn.prepare(test)
    linear = churn.logit.predict_proba(log_features(f)[churn.logit_columns].to_numpy())[:, 1]
    trees = churn.trees.predict_proba(tree_features(f, churn.countries))[:, 1]
    assert churn.predict_proba(test) == pytest.approx(0.5 * (linear + trees), abs=1e-9)
    ltv = LTVModel(horizon_days=92).fit(cohorts(), test)
    xt = tree_features(with_history(test, ltv.history, 92), ltv.countries)
    assert np.exp(ltv._spend_trees.predict_raw(xt.to_numpy())) == pytest.approx(ltv.spend_trees.predict(xt), rel=1e-9)
