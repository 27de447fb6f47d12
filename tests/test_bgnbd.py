"""BG/NBD and Gamma-Gamma: published CDNOW estimates, simulated recovery, and known-answer checks."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from patron.training.customer.beta_geo import BetaGeoModel
from patron.training.customer.gamma_gamma import GammaGammaModel

CDNOW = Path(__file__).resolve().parent / "data" / "cdnow" / "cdnow_customers_summary_with_transactions.csv"

# Estimates as published for this sample (2,357 customers, 39-week calibration period).
BGNBD_PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
GG_PUBLISHED = {"p": 6.25, "q": 3.74, "v": 15.44}
CDNOW_BG = BetaGeoModel(**BGNBD_PUBLISHED)


@pytest.fixture(scope="module")
def cdnow() -> pd.DataFrame:
    """frequency x, recency t_x, age T (weeks) and mean repeat spend zbar ($) per customer."""
    return pd.read_csv(CDNOW)


@pytest.fixture(scope="module")
def cdnow_bg(cdnow: pd.DataFrame) -> BetaGeoModel:
    return BetaGeoModel.fit(cdnow["x"], cdnow["t_x"], cdnow["T"])


@pytest.fixture(scope="module")
def cdnow_gg(cdnow: pd.DataFrame) -> GammaGammaModel:
    return GammaGammaModel.fit(cdnow["x"], cdnow["zbar"])


def sig3(value: float) -> float:
    return float(f"{value:.3g}")


# ---------------------------------------------------------------------------------------------
# Published CDNOW results
# ---------------------------------------------------------------------------------------------


def test_cdnow_sample_is_the_published_one(cdnow: pd.DataFrame) -> None:
    assert len(cdnow) == 2357
    assert int((cdnow["x"] > 0).sum()) == 946
    assert cdnow["T"].max() == pytest.approx(38.86)


def test_bgnbd_reproduces_published_cdnow_estimates(cdnow_bg: BetaGeoModel, cdnow: pd.DataFrame) -> None:
    got = {k: getattr(cdnow_bg, k) for k in BGNBD_PUBLISHED}
    assert {k: sig3(v) for k, v in got.items()} == {k: sig3(v) for k, v in BGNBD_PUBLISHED.items()}
    for k, v in BGNBD_PUBLISHED.items():
        assert got[k] == pytest.approx(v, rel=5e-3), k
    # Fader, Hardie & Lee (2005) report LL = -9582.4 at the optimum.
    ll = cdnow_bg.log_likelihood(cdnow["x"], cdnow["t_x"], cdnow["T"]).sum()
    assert round(float(ll), 1) == -9582.4


def test_bgnbd_predictions_match_hardie_spreadsheet(cdnow_bg: BetaGeoModel) -> None:
    # Customer with x=2, t_x=30.43, T=38.86: expected purchases in the next 39 weeks.
    assert float(cdnow_bg.expected_purchases(39, 2, 30.43, 38.86)) == pytest.approx(1.226, abs=1e-3)
    # Cumulative repeat purchases of a new customer (Hardie's BG/NBD spreadsheet).
    times = [0.1429, 1.0, 3.0, 31.8571, 32.0, 78.0]
    expected = [0.0078, 0.0532, 0.1506, 1.0405, 1.0437, 1.8576]
    np.testing.assert_allclose(cdnow_bg.expected_purchases_new_customer(times), expected, atol=5e-4)


def test_gamma_gamma_reproduces_published_cdnow_estimates(cdnow_gg: GammaGammaModel) -> None:
    got = {k: getattr(cdnow_gg, k) for k in GG_PUBLISHED}
    assert {k: sig3(v) for k, v in got.items()} == {k: sig3(v) for k, v in GG_PUBLISHED.items()}
    for k, v in GG_PUBLISHED.items():
        assert got[k] == pytest.approx(v, rel=5e-3), k


def test_fit_does_not_depend_on_time_unit_or_currency(cdnow: pd.DataFrame, cdnow_bg: BetaGeoModel,
                                                      cdnow_gg: GammaGammaModel) -> None:
    in_days = BetaGeoModel.fit(cdnow["x"], cdnow["t_x"] * 7, cdnow["T"] * 7)
    assert in_days.alpha == pytest.approx(cdnow_bg.alpha * 7, rel=1e-5)
    for k in ("r", "a", "b"):
        assert getattr(in_days, k) == pytest.approx(getattr(cdnow_bg, k), rel=1e-5)
    in_cents = GammaGammaModel.fit(cdnow["x"], cdnow["zbar"] * 100)
    assert in_cents.v == pytest.approx(cdnow_gg.v * 100, rel=1e-5)
    assert in_cents.p == pytest.approx(cdnow_gg.p, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Recovery from simulated data
# ---------------------------------------------------------------------------------------------


def simulate_bgnbd(n: int, r: float, alpha: float, a: float, b: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The BG/NBD story: Poisson purchases at rate lambda, dropout with prob. p after each repeat."""
    lam = rng.gamma(r, 1.0 / alpha, n)
    p = rng.beta(a, b, n)
    T = rng.uniform(20.0, 60.0, n)
    x, tx, t = np.zeros(n), np.zeros(n), np.zeros(n)
    alive = np.ones(n, dtype=bool)
    while alive.any():
        nxt = t + rng.exponential(1.0, n) / lam
        buys = alive & (nxt <= T)
        x[buys] += 1
        tx[buys] = nxt[buys]
        t = np.where(buys, nxt, t)
        alive = buys & (rng.random(n) >= p)
    return x, tx, T


def test_bgnbd_recovers_simulated_parameters() -> None:
    true = BetaGeoModel(r=0.5, alpha=6.0, a=0.7, b=3.0)
    x, tx, T = simulate_bgnbd(5000, true.r, true.alpha, true.a, true.b, np.random.default_rng(7))
    fit = BetaGeoModel.fit(x, tx, T)
    # Sampling sd at this size (20 seeds): r 3.5%, alpha 5%, a 15%, b 19%.
    assert fit.r == pytest.approx(true.r, rel=0.15)
    assert fit.alpha == pytest.approx(true.alpha, rel=0.2)
    assert fit.a == pytest.approx(true.a, rel=0.5)
    assert fit.b == pytest.approx(true.b, rel=0.6)
    # The well-identified combinations: mean purchase rate and mean dropout probability.
    assert fit.r / fit.alpha == pytest.approx(true.r / true.alpha, rel=0.06)
    assert fit.a / (fit.a + fit.b) == pytest.approx(true.a / (true.a + true.b), rel=0.15)
    # An MLE is at least as likely as the truth.
    assert fit.log_likelihood(x, tx, T).sum() >= true.log_likelihood(x, tx, T).sum()


def test_gamma_gamma_recovers_simulated_parameters() -> None:
    rng = np.random.default_rng(3)
    n, p, q, v = 3000, 6.0, 4.0, 15.0
    x = 1 + rng.poisson(2.0, n)
    nu = rng.gamma(q, 1.0 / v, n)
    m = np.array([rng.gamma(p, 1.0 / nu_i, k).mean() for nu_i, k in zip(nu, x)])
    fit = GammaGammaModel.fit(x, m)
    assert fit.q == pytest.approx(q, rel=0.12)
    assert fit.p == pytest.approx(p, rel=0.5)
    assert fit.v == pytest.approx(v, rel=0.5)
    assert fit.population_mean_spend == pytest.approx(p * v / (q - 1), rel=0.05)
    truth = GammaGammaModel(p=p, q=q, v=v)
    assert fit.log_likelihood(x, m).sum() >= truth.log_likelihood(x, m).sum()


def test_data_without_dropout_warns_and_keeps_everyone_alive() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    lam, T = rng.gamma(0.7, 1 / 9, n), rng.uniform(5, 30, n)
    x = rng.poisson(lam * T)
    tx = np.array([rng.uniform(0, age, k).max() if k else 0.0 for age, k in zip(T, x)])
    with pytest.warns(RuntimeWarning, match="no sign of dropout"):
        fit = BetaGeoModel.fit(x, tx, T)
    assert np.all(fit.p_alive(x, tx, T) > 0.99)
    assert fit.r / fit.alpha == pytest.approx(0.7 / 9, rel=0.1)


def test_fit_survives_extreme_customers(cdnow: pd.DataFrame) -> None:
    """Huge frequencies, a purchase at the very end, a customer born just now: finite fits."""
    x = np.r_[cdnow["x"], 5000, 20000, 300, 1, 1]
    tx = np.r_[cdnow["t_x"], 38.0, 38.86, 0.5, 1e-3, 38.86]
    T = np.r_[cdnow["T"], 38.86, 38.86, 38.86, 1e-3, 38.86]
    bg = BetaGeoModel.fit(x, tx, T)
    for values in (bg.p_alive(x, tx, T), bg.expected_purchases(13, x, tx, T), bg.log_likelihood(x, tx, T)):
        assert np.all(np.isfinite(values))
    assert float(bg.expected_purchases(13, 20000, 38.86, 38.86)) > 1000
    gg = GammaGammaModel.fit(np.r_[cdnow["x"], 20000], np.r_[cdnow["zbar"], 1e6])
    assert float(gg.expected_spend(20000, 1e6)) == pytest.approx(1e6, rel=1e-3)


# ---------------------------------------------------------------------------------------------
# P(alive) and expected purchases
# ---------------------------------------------------------------------------------------------


def test_p_alive_is_one_without_repeat_purchases() -> None:
    np.testing.assert_array_equal(CDNOW_BG.p_alive([0, 0, 0], [0, 0, 0], [0.5, 10.0, 1000.0]), 1.0)


def test_p_alive_known_value() -> None:
    # 1 / (1 + a/(b+x-1) * ((alpha+T)/(alpha+t_x))^(r+x)) by hand for x=2, t_x=30.43, T=38.86.
    r, alpha, a, b = 0.243, 4.414, 0.793, 2.426
    odds = a / (b + 1) * ((alpha + 38.86) / (alpha + 30.43)) ** (r + 2)
    assert float(CDNOW_BG.p_alive(2, 30.43, 38.86)) == pytest.approx(1 / (1 + odds), rel=1e-12)


@pytest.mark.parametrize("frequency", [1, 3, 10, 50])
def test_more_recent_last_purchase_never_lowers_p_alive(frequency: int) -> None:
    recency = np.linspace(0.01, 38.0, 200)
    pa = CDNOW_BG.p_alive(frequency, recency, 38.0)
    assert np.all(np.diff(pa) >= 0)
    assert pa[-1] > pa[0]


def test_more_purchases_long_ago_lower_p_alive() -> None:
    frequency = np.arange(1, 40)
    pa = CDNOW_BG.p_alive(frequency, 5.0, 40.0)
    assert np.all(np.diff(pa) < 0)
    assert pa[-1] < 1e-6  # many purchases, then 35 silent weeks: almost surely gone, and no NaN


def test_expected_purchases_zero_at_zero_and_increasing_in_t() -> None:
    t = np.linspace(0.0, 200.0, 101)
    for x, tx, T in [(0, 0.0, 38.0), (2, 30.43, 38.86), (10, 5.0, 40.0), (500, 99.0, 100.0), (5000, 1.0, 1.5)]:
        e = CDNOW_BG.expected_purchases(t, x, tx, T)
        assert e[0] == 0.0
        assert np.all(np.isfinite(e))
        assert np.all(np.diff(e) > 0)


def test_expected_purchases_matches_direct_integration() -> None:
    """The hyp2f1 closed form against p_alive * E_p[(1 - (1 + p t/(alpha+T))^-(r+x)) / p]."""
    for model in (CDNOW_BG, BetaGeoModel(r=2.0, alpha=3.0, a=1.0 + 1e-7, b=0.5), BetaGeoModel(1.3, 20.0, 4.0, 0.8)):
        for x, tx, T, t in [(0, 0.0, 38.0, 39.0), (3, 20.0, 38.0, 10.0), (40, 30.0, 31.0, 52.0)]:
            s, k = t / (model.alpha + T), model.r + x
            beta = stats.beta(model.a, model.b + x)
            inner, _ = integrate.quad(lambda p: beta.pdf(p) * -math.expm1(-k * math.log1p(p * s)) / p,
                                      0, 1, limit=200, epsabs=0, epsrel=1e-10)
            direct = float(model.p_alive(x, tx, T)) * inner
            assert float(model.expected_purchases(t, x, tx, T)) == pytest.approx(direct, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Gamma-Gamma spend
# ---------------------------------------------------------------------------------------------


def test_expected_spend_shrinks_towards_population_mean() -> None:
    gg = GammaGammaModel(**GG_PUBLISHED)
    pop = gg.population_mean_spend
    assert pop == pytest.approx(6.25 * 15.44 / 2.74)
    assert float(gg.expected_spend(0, 0.0)) == pytest.approx(pop)
    frequency = np.array([1, 2, 5, 20, 100])
    for own in (5.0, 200.0):  # below and above the population mean
        e = gg.expected_spend(frequency, own)
        assert np.all((np.minimum(own, pop) < e) & (e < np.maximum(own, pop)))
        gap = np.abs(e - own)
        assert np.all(np.diff(gap) < 0)  # more purchases: less shrinkage
    # By hand: p (v + x m) / (p x + q - 1) for x=2, m=50.
    assert float(gg.expected_spend(2, 50.0)) == pytest.approx(6.25 * (15.44 + 100) / (12.5 + 2.74))


# ---------------------------------------------------------------------------------------------
# Lifetime value, persistence
# ---------------------------------------------------------------------------------------------


def test_lifetime_value_from_the_purchase_history_model(cdnow: pd.DataFrame) -> None:
    """What the customer models take from BG/NBD + Gamma-Gamma (training.customer.PurchaseHistory,
    fed by the btyd_* features in days) on the published CDNOW parameters."""
    from patron.training.customer.history import PurchaseHistory

    gg = GammaGammaModel(**GG_PUBLISHED)
    frame = pd.DataFrame({"btyd_frequency": cdnow["x"], "btyd_recency_days": cdnow["t_x"] * 7,
                          "btyd_age_days": cdnow["T"] * 7, "btyd_monetary": cdnow["zbar"]})
    out = PurchaseHistory(CDNOW_BG, gg).outputs(frame, horizon_days=39 * 7)
    first = cdnow.index[cdnow["ID"] == 1][0]  # x=2, t_x=30.43, T=38.86, zbar=22.35
    assert out["bg_expected_orders"][first] == pytest.approx(1.226, abs=1e-3)
    assert out["bg_expected_value"][first] == pytest.approx(out["bg_expected_orders"][first] * float(gg.expected_spend(2, 22.35)))
    assert (PurchaseHistory(CDNOW_BG, gg).outputs(frame, horizon_days=0)["bg_expected_value"] == 0).all()


def test_save_load_round_trip(cdnow: pd.DataFrame, cdnow_bg: BetaGeoModel, cdnow_gg: GammaGammaModel) -> None:
    bg2 = BetaGeoModel.from_dict(json.loads(json.dumps(cdnow_bg.to_dict())))
    gg2 = GammaGammaModel.from_dict(json.loads(json.dumps(cdnow_gg.to_dict())))
    assert bg2 == cdnow_bg and gg2 == cdnow_gg
    x, tx, T, m = cdnow["x"], cdnow["t_x"], cdnow["T"], cdnow["zbar"]
    np.testing.assert_array_equal(bg2.expected_purchases(13, x, tx, T), cdnow_bg.expected_purchases(13, x, tx, T))
    np.testing.assert_array_equal(bg2.p_alive(x, tx, T), cdnow_bg.p_alive(x, tx, T))
    np.testing.assert_array_equal(gg2.expected_spend(x, m), cdnow_gg.expected_spend(x, m))


# ---------------------------------------------------------------------------------------------
# Invalid inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: BetaGeoModel.fit([], [], []), "expected at least one customer, got empty"),
        (lambda: BetaGeoModel.fit([1, -1], [2.0, 0.0], [3.0, 3.0]), r"frequency: expected non-negative.*-1"),
        (lambda: BetaGeoModel.fit([1, 1.5], [2.0, 1.0], [3.0, 3.0]), "whole numbers"),
        (lambda: BetaGeoModel.fit([1, 2], [4.0, 1.0], [3.0, 3.0]), r"recency <= T.*recency=.*4\.0.*T=.*3\.0"),
        (lambda: BetaGeoModel.fit([1, 2], [1.0, -1.0], [3.0, 3.0]), "recency: expected >= 0"),
        (lambda: BetaGeoModel.fit([1, 2], [1.0, 1.0], [3.0, 0.0]), r"T: expected > 0"),
        (lambda: BetaGeoModel.fit([0, 2], [1.0, 1.0], [3.0, 3.0]), "expected 0 for customers with frequency 0"),
        (lambda: BetaGeoModel.fit([1, 2], [1.0, np.nan], [3.0, 3.0]), "expected finite numbers, got NaN"),
        (lambda: BetaGeoModel.fit([1, 2, 3], [1.0, 1.0], [3.0, 3.0]), r"same length.*\(3,\), \(2,\)"),
        (lambda: BetaGeoModel.fit([0, 0], [0.0, 0.0], [3.0, 3.0]), "at least one customer with a repeat purchase"),
        (lambda: BetaGeoModel.fit([1], [1.0], [2.0], penalizer=-1.0), "penalizer: expected a finite number >= 0"),
        (lambda: BetaGeoModel(r=-1.0, alpha=1.0, a=1.0, b=1.0), r"BetaGeoModel.r: expected a finite number > 0, got -1"),
        (lambda: BetaGeoModel.from_dict({"r": 1.0, "alpha": 1.0}), r"expected keys .* missing \['a', 'b'\]"),
        (lambda: BetaGeoModel.from_dict(GammaGammaModel(1, 2, 3).to_dict()), "expected model 'BetaGeoModel'"),
        (lambda: CDNOW_BG.expected_purchases(-1.0, 1, 1.0, 2.0), "t: expected a horizon >= 0"),
        (lambda: GammaGammaModel.fit([1, 2], [10.0, 0.0]), "monetary_value: expected > 0 for customers with frequency > 0"),
        (lambda: GammaGammaModel.fit([1, 0], [10.0, 0.0]), "at least 2 customers with frequency > 0 to fit Gamma-Gamma, got 1"),
        (lambda: GammaGammaModel.fit([1, 2], [10.0, -3.0]), "monetary_value: expected >= 0"),
        (lambda: GammaGammaModel(p=1.0, q=0.5, v=1.0).expected_spend([0], [0.0]), "expected q > 1"),
    ],
)
def test_invalid_inputs_raise_value_error(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
