"""Buy-till-you-die lifetime value: the BG/NBD purchase model and the Gamma-Gamma spend model.

Why these models: a churn label needs an arbitrary "no purchase for N days" cut-off, whereas the
BG/NBD model (Fader, Hardie & Lee 2005, "Counting your customers the easy way") treats dropout as
unobserved and infers, from each customer's frequency, recency and age alone, how likely they are
to still be a customer and how many purchases to expect from them. The Gamma-Gamma model (Fader,
Hardie & Lee 2005, "RFM and CLV: using iso-value curves") adds how much they spend per purchase,
shrinking a customer's observed mean towards the population mean, more so when it rests on few
purchases. Their product is an expected (undiscounted) value over a horizon.

Both are fitted here by maximum likelihood with scipy: the parameters are optimised on the log
scale (so they stay positive without constraints that stall the optimiser), time and money are
rescaled to unit size before fitting (so one set of starting values and bounds works whatever the
time unit or currency), the gradients are analytic, and a few starting points are tried. The
likelihoods are evaluated in log space with ``gammaln``/``betaln`` so that customers with hundreds
of purchases do not overflow.

Conventions (those of the BTYD literature): an *order* is a distinct calendar day (UTC) on which a
customer bought; ``frequency`` counts the repeat purchase days (all but the first), ``recency`` is
the time from the first to the last purchase day, ``T`` the time from the first purchase day to the
end of observation, all in one time unit (weeks by default).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize
from scipy.special import betaln, digamma, expit, gammaln, hyp2f1


__all__ = ["BetaGeoModel", "GammaGammaModel"]

# Log-parameters are kept inside [-_LOG_BOUND, _LOG_BOUND] on the rescaled problem (about 1e-9 to
# 1e9 times the natural scale): wide enough for any real fit, narrow enough that a degenerate data
# set (e.g. no sign of dropout, which sends a and b to infinity) stops at a finite model.
_LOG_BOUND = 20.0
# Within this distance of a == 1 the closed form for expected purchases divides 0 by 0; there it
# is evaluated on both sides and averaged (the function is smooth in a).
_A_NEAR_ONE = 1e-5


# --------------------------------------------------------------------------------------------------
# Input checks: every public entry point fails with a ValueError saying what was expected.
# --------------------------------------------------------------------------------------------------


def _float_array(name: str, values: npt.ArrayLike) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected numbers, got {type(values).__name__} ({exc})") from exc
    if arr.ndim > 1:
        raise ValueError(f"{name}: expected a scalar or a 1-D array, got shape {arr.shape}")
    return arr


def _first_bad(mask: np.ndarray, *arrays: tuple[str, np.ndarray]) -> str:
    """Describe how many entries are bad and show the first one, for error messages."""
    idx = int(np.flatnonzero(mask)[0])
    shown = ", ".join(f"{name}={np.atleast_1d(arr)[idx]!r}" for name, arr in arrays)
    return f"{int(mask.sum())} offending value(s), first at position {idx}: {shown}"


def _check_finite(name: str, arr: np.ndarray) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name}: expected finite numbers, got NaN/inf ({_first_bad(bad, (name, arr))})")


def _check_rft(
    frequency: npt.ArrayLike, recency: npt.ArrayLike, T: npt.ArrayLike, *, for_fit: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and broadcast (frequency, recency, T) per customer."""
    x = _float_array("frequency", frequency)
    tx = _float_array("recency", recency)
    age = _float_array("T", T)
    try:
        x, tx, age = np.broadcast_arrays(x, tx, age)
    except ValueError as exc:
        raise ValueError(
            "frequency, recency and T: expected arrays of the same length (one entry per customer), "
            f"got shapes {np.shape(frequency)}, {np.shape(recency)}, {np.shape(T)}"
        ) from exc
    if x.size == 0:
        raise ValueError("frequency, recency and T: expected at least one customer, got empty arrays")
    for name, arr in (("frequency", x), ("recency", tx), ("T", age)):
        _check_finite(name, arr)
    bad = (x < 0) | (x != np.round(x))
    if bad.any():
        raise ValueError(
            "frequency: expected non-negative whole numbers of repeat purchases, got "
            + _first_bad(bad, ("frequency", x))
        )
    bad = tx < 0
    if bad.any():
        raise ValueError("recency: expected >= 0, got " + _first_bad(bad, ("recency", tx)))
    bad = age <= 0
    if bad.any():
        raise ValueError("T: expected > 0 (customer age at the end of observation), got " + _first_bad(bad, ("T", age)))
    bad = tx > age
    if bad.any():
        raise ValueError(
            "recency: expected recency <= T (the last purchase cannot come after the end of "
            "observation), got " + _first_bad(bad, ("recency", tx), ("T", age))
        )
    bad = (x == 0) & (tx != 0)
    if bad.any():
        raise ValueError(
            "recency: expected 0 for customers with frequency 0 (no repeat purchase), got "
            + _first_bad(bad, ("frequency", x), ("recency", tx))
        )
    if for_fit and not (x > 0).any():
        raise ValueError(
            "frequency: expected at least one customer with a repeat purchase (frequency > 0) to "
            "fit BG/NBD, got none"
        )
    return x, tx, age


def _check_t(t: npt.ArrayLike) -> np.ndarray:
    arr = _float_array("t", t)
    _check_finite("t", arr)
    bad = arr < 0
    if bad.any():
        raise ValueError("t: expected a horizon >= 0 in time units, got " + _first_bad(bad, ("t", arr)))
    return arr


def _check_fm(
    frequency: npt.ArrayLike, monetary_value: npt.ArrayLike, *, for_fit: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and broadcast (frequency, monetary_value) per customer."""
    x = _float_array("frequency", frequency)
    m = _float_array("monetary_value", monetary_value)
    try:
        x, m = np.broadcast_arrays(x, m)
    except ValueError as exc:
        raise ValueError(
            "frequency and monetary_value: expected arrays of the same length (one entry per "
            f"customer), got shapes {np.shape(frequency)}, {np.shape(monetary_value)}"
        ) from exc
    if x.size == 0:
        raise ValueError("frequency and monetary_value: expected at least one customer, got empty arrays")
    _check_finite("frequency", x)
    _check_finite("monetary_value", m)
    bad = (x < 0) | (x != np.round(x))
    if bad.any():
        raise ValueError(
            "frequency: expected non-negative whole numbers of repeat purchases, got "
            + _first_bad(bad, ("frequency", x))
        )
    bad = m < 0
    if bad.any():
        raise ValueError("monetary_value: expected >= 0, got " + _first_bad(bad, ("monetary_value", m)))
    bad = (x > 0) & (m <= 0)
    if bad.any():
        raise ValueError(
            "monetary_value: expected > 0 for customers with frequency > 0 (mean spend of their "
            "repeat purchases), got " + _first_bad(bad, ("frequency", x), ("monetary_value", m))
        )
    if for_fit and int((x > 0).sum()) < 2:
        raise ValueError(
            "frequency: expected at least 2 customers with frequency > 0 to fit Gamma-Gamma, got "
            f"{int((x > 0).sum())}"
        )
    return x, m


def _check_penalizer(penalizer: float) -> float:
    if not (isinstance(penalizer, (int, float)) and math.isfinite(penalizer) and penalizer >= 0):
        raise ValueError(f"penalizer: expected a finite number >= 0, got {penalizer!r}")
    return float(penalizer)


def _check_params(model: str, **params: float) -> None:
    for name, value in params.items():
        if not (isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{model}.{name}: expected a finite number > 0, got {value!r}")


def _params_from_dict(model: str, d: dict[str, Any], names: tuple[str, ...]) -> dict[str, float]:
    if not isinstance(d, dict):
        raise ValueError(f"{model}.from_dict: expected a dict, got {type(d).__name__}")
    if d.get("model", model) != model:
        raise ValueError(f"{model}.from_dict: expected model {model!r}, got {d.get('model')!r}")
    missing = [n for n in names if n not in d]
    if missing:
        raise ValueError(f"{model}.from_dict: expected keys {list(names)}, missing {missing}")
    try:
        return {n: float(d[n]) for n in names}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{model}.from_dict: expected numeric values for {list(names)}, got {d!r}") from exc


# --------------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------------


def _minimise(
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]], starts: list[np.ndarray], model: str
) -> np.ndarray:
    """Best L-BFGS-B solution over several starting points, in log-parameters.

    Several starts because these likelihoods, though usually well behaved, can have flat ridges on
    messy data (e.g. a and b growing together when dropout is barely identified); the tight
    tolerances are what reproducing published estimates to three significant digits needs.
    """
    best = None
    bounds = [(-_LOG_BOUND, _LOG_BOUND)] * len(starts[0])
    for x0 in starts:
        x0 = np.clip(x0, -_LOG_BOUND + 1, _LOG_BOUND - 1)
        res = minimize(
            objective,
            x0,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-10, "maxcor": 20},
        )
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise RuntimeError(f"{model}: the likelihood was not finite at any starting point")
    # A line-search stop at machine precision is a converged fit; anything else is worth a warning.
    grad_norm = float(np.max(np.abs(best.jac))) if best.jac is not None else float("nan")
    if not best.success and not grad_norm < 1e-5:
        warnings.warn(
            f"{model}: optimiser stopped without converging ({best.message}); max |gradient| "
            f"{grad_norm:.2e}",
            RuntimeWarning,
            stacklevel=3,
        )
    if np.any(np.abs(best.x) >= _LOG_BOUND - 1e-6):
        warnings.warn(
            f"{model}: a parameter reached its bound (log-parameters {best.x.round(3).tolist()}); "
            "the data barely identify it, consider a small penalizer",
            RuntimeWarning,
            stacklevel=3,
        )
    return best.x


# --------------------------------------------------------------------------------------------------
# BG/NBD
# --------------------------------------------------------------------------------------------------


def _bgnbd_loglik_and_grad(
    r: float, alpha: float, a: float, b: float, x: np.ndarray, tx: np.ndarray, T: np.ndarray, *, grad: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-customer BG/NBD log-likelihood (eq. 6 of the paper) and its gradient in (r, alpha, a, b).

    L = B(a, b+x)/B(a, b) * G(r+x) a^r / (G(r) (alpha+T)^(r+x))
        + [x > 0] B(a+1, b+x-1)/B(a, b) * G(r+x) a^r / (G(r) (alpha+t_x)^(r+x))
    The second term exists only for repeat customers (one who never bought again cannot have
    dropped out after a repeat purchase); it is combined with the first by logaddexp.
    """
    has = x > 0
    xs = np.where(has, x, 1.0)  # keeps b + x - 1 > 0 in the masked-out branch
    a1 = gammaln(r + x) - gammaln(r) + r * math.log(alpha)
    base = betaln(a, b)
    a2 = betaln(a, b + x) - base - (r + x) * np.log(alpha + T)
    a3 = np.where(has, betaln(a + 1.0, b + xs - 1.0) - base - (r + x) * np.log(alpha + tx), -np.inf)
    mix = np.logaddexp(a2, a3)
    ll = a1 + mix
    if not grad:
        return ll, None
    w = np.exp(a3 - mix)  # share of the "dropped out after the last purchase" term, 0 when x == 0
    v = 1.0 - w
    psi_ab = digamma(a + b)
    psi_abx = digamma(a + b + x)
    d_base_a = digamma(a) - psi_ab
    d_base_b = digamma(b) - psi_ab
    d_r = digamma(r + x) - digamma(r) + math.log(alpha) - v * np.log(alpha + T) - w * np.log(alpha + tx)
    d_alpha = r / alpha - v * (r + x) / (alpha + T) - w * (r + x) / (alpha + tx)
    d_a = (
        v * (digamma(a) - psi_abx - d_base_a)
        + w * (digamma(a + 1.0) - psi_abx - d_base_a)
    )
    d_b = (
        v * (digamma(b + x) - psi_abx - d_base_b)
        + w * (np.where(has, digamma(b + xs - 1.0), 0.0) - psi_abx - d_base_b)
    )
    return ll, np.stack([d_r, d_alpha, d_a, d_b])


def _expected_repeat_given_alive(
    s: np.ndarray, r: float, a: float, b: float, x: np.ndarray
) -> np.ndarray:
    """E[purchases in the next t | alive now, x purchases], with s = t / (alpha + T).

    Given alive, lambda ~ Gamma(r+x, alpha+T) and p ~ Beta(a, b+x), and the expected count is
    E_p[(1 - (1 + p s)^-(r+x)) / p]. Its closed form is the paper's eq. 10 numerator,
    (a+b+x-1)/(a-1) * [1 - (alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; t/(alpha+T+t))].
    Two Pfaff transformations turn it into
    (a+b+x-1)/(a-1) * [1 - (1+s)^(1-a) 2F1(a-1, a+b-1-r; a+b+x-1; s/(1+s))],
    where the purchase count x appears only in the third argument: scipy's hyp2f1 is accurate there
    (checked against mpmath to ~1e-8 for x up to 5000 and t up to 1000 (alpha+T)), whereas the
    textbook form returns inf/NaN for customers with hundreds of purchases.
    """

    def at(a_: float) -> np.ndarray:
        c = a_ + b + x - 1.0
        w = s / (1.0 + s)
        f = hyp2f1(a_ - 1.0, a_ + b - 1.0 - r, c, w)
        return c / (a_ - 1.0) * (1.0 - np.exp((1.0 - a_) * np.log1p(s)) * f)

    if abs(a - 1.0) < _A_NEAR_ONE:
        return 0.5 * (at(1.0 - _A_NEAR_ONE) + at(1.0 + _A_NEAR_ONE))
    return at(a)


@dataclass(frozen=True)
class BetaGeoModel:
    """BG/NBD: purchases while alive are Poisson(lambda), lambda ~ Gamma(r, alpha) across customers;
    after each purchase a customer drops out with probability p, p ~ Beta(a, b).

    ``alpha`` is in the time unit of the (recency, T) it was fitted on; r, a, b are unit-free.
    """

    r: float
    alpha: float
    a: float
    b: float

    def __post_init__(self) -> None:
        _check_params("BetaGeoModel", r=self.r, alpha=self.alpha, a=self.a, b=self.b)

    @classmethod
    def fit(
        cls,
        frequency: npt.ArrayLike,
        recency: npt.ArrayLike,
        T: npt.ArrayLike,
        *,
        penalizer: float = 0.0,
    ) -> BetaGeoModel:
        """Maximum-likelihood fit on one row per customer.

        ``penalizer`` adds ``penalizer * sum(log(param)**2)`` to the mean negative log-likelihood,
        with alpha measured in units of the mean T (so the penalty does not depend on the time
        unit). It pulls the parameters towards 1 on that scale; about 1e-3 keeps a fit finite on
        data where dropout is barely identified (larger values visibly bias the estimates), and 0
        gives the plain MLE.
        """
        x, tx, age = _check_rft(frequency, recency, T, for_fit=True)
        pen = _check_penalizer(penalizer)
        x, tx, age = x.ravel(), tx.ravel(), age.ravel()
        scale = float(age.mean())  # time rescaled so the mean age is 1
        txs, ages = tx / scale, age / scale
        n = x.size

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            r, alpha, a, b = np.exp(theta)
            ll, g = _bgnbd_loglik_and_grad(r, alpha, a, b, x, txs, ages, grad=True)
            assert g is not None
            f = -ll.sum() / n + pen * float(theta @ theta)
            dtheta = -(g.sum(axis=1) / n) * np.exp(theta) + 2.0 * pen * theta
            if not np.isfinite(f):
                return float("inf"), np.zeros_like(theta)
            return float(f), dtheta

        # Starting points: purchase rates from a crude moment estimate (mean rate x / T in rescaled
        # time), and a moderate dropout probability; the alternatives cover heavier heterogeneity.
        rate = max(float(np.mean(x / ages)), 1e-3)
        starts = [
            np.log([1.0, 1.0 / rate, 1.0, 3.0]),
            np.log([0.3, 0.3 / rate, 0.8, 2.5]),
            np.log([3.0, 3.0 / rate, 2.0, 10.0]),
        ]
        theta = _minimise(objective, starts, "BetaGeoModel")
        r, alpha, a, b = np.exp(theta)
        if a / (a + b) < 1e-6:
            warnings.warn(
                f"BetaGeoModel: the data show no sign of dropout (mean dropout probability "
                f"a/(a+b) = {a / (a + b):.1e}), so p_alive will be ~1 for everyone; a longer history "
                "or a small penalizer (e.g. 1e-3) gives a usable dropout estimate",
                RuntimeWarning,
                stacklevel=2,
            )
        return cls(r=float(r), alpha=float(alpha * scale), a=float(a), b=float(b))

    def log_likelihood(self, frequency: npt.ArrayLike, recency: npt.ArrayLike, T: npt.ArrayLike) -> np.ndarray:
        """Per-customer log-likelihood of (frequency, recency, T); sum it for the model's total."""
        x, tx, age = _check_rft(frequency, recency, T)
        ll, _ = _bgnbd_loglik_and_grad(self.r, self.alpha, self.a, self.b, x, tx, age, grad=False)
        return ll

    def p_alive(self, frequency: npt.ArrayLike, recency: npt.ArrayLike, T: npt.ArrayLike) -> np.ndarray:
        """P(still a customer at T | history) = 1 / (1 + [x>0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x)).

        Exactly 1 for customers without repeat purchases: in BG/NBD dropout can only happen right
        after a purchase, so someone who never bought again has had no chance to leave yet.
        Computed as a logistic of the log-odds so a long silence after many purchases underflows
        cleanly to 0 instead of overflowing.
        """
        x, tx, age = _check_rft(frequency, recency, T)
        has = x > 0
        xs = np.where(has, x, 1.0)
        log_odds_dead = (
            math.log(self.a)
            - np.log(self.b + xs - 1.0)
            + (self.r + x) * np.log1p((age - tx) / (self.alpha + tx))
        )
        return np.where(has, expit(-log_odds_dead), 1.0)

    def expected_purchases(
        self, t: npt.ArrayLike, frequency: npt.ArrayLike, recency: npt.ArrayLike, T: npt.ArrayLike
    ) -> np.ndarray:
        """E[number of purchases in (T, T + t] | history] (eq. 10 of the paper), t in time units.

        Equal to p_alive times the expected count of a customer known to be alive; 0 at t = 0 and
        increasing in t. See ``_expected_repeat_given_alive`` for the numerically stable form.
        """
        horizon = _check_t(t)
        x, tx, age = _check_rft(frequency, recency, T)
        horizon, x, tx, age = np.broadcast_arrays(horizon, x, tx, age)
        s = horizon / (self.alpha + age)
        given_alive = _expected_repeat_given_alive(s, self.r, self.a, self.b, x)
        return self.p_alive(x, tx, age) * given_alive

    def expected_purchases_new_customer(self, t: npt.ArrayLike) -> np.ndarray:
        """E[repeat purchases in (0, t]] for a customer who made a first purchase at time 0 (eq. 7).

        Useful to compare the model with a cohort's cumulative repeat purchases over time.
        """
        horizon = _check_t(t)
        s = horizon / self.alpha
        return _expected_repeat_given_alive(s, self.r, self.a, self.b, np.zeros_like(s))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable parameters, for saving with a model artifact."""
        return {"model": "BetaGeoModel", "r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BetaGeoModel:
        """Inverse of ``to_dict``; raises ValueError on missing or invalid parameters."""
        return cls(**_params_from_dict("BetaGeoModel", d, ("r", "alpha", "a", "b")))


# --------------------------------------------------------------------------------------------------
# Gamma-Gamma
# --------------------------------------------------------------------------------------------------


def _gg_loglik_and_grad(
    p: float, q: float, v: float, x: np.ndarray, m: np.ndarray, *, grad: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Log density of a customer's mean spend m over x purchases (x > 0 only).

    Transactions z ~ Gamma(p, nu), nu ~ Gamma(q, v); the mean of x of them has marginal density
    G(px+q) / (G(px) G(q)) * v^q m^(px-1) x^(px) / (v + x m)^(px+q).
    """
    px = p * x
    log_xm_v = np.log(x * m + v)
    ll = (
        gammaln(px + q) - gammaln(px) - gammaln(q) + q * math.log(v)
        + (px - 1.0) * np.log(m) + px * np.log(x) - (px + q) * log_xm_v
    )
    if not grad:
        return ll, None
    psi = digamma(px + q)
    d_p = x * (psi - digamma(px) + np.log(m) + np.log(x) - log_xm_v)
    d_q = psi - digamma(q) + math.log(v) - log_xm_v
    d_v = q / v - (px + q) / (x * m + v)
    return ll, np.stack([d_p, d_q, d_v])


@dataclass(frozen=True)
class GammaGammaModel:
    """Gamma-Gamma spend: each transaction ~ Gamma(p, nu), nu ~ Gamma(q, v) across customers.

    A customer's mean transaction value is p / nu, with population mean p v / (q - 1). ``v`` is in
    the currency of the monetary values it was fitted on. The model assumes spend per transaction
    is independent of purchase frequency.
    """

    p: float
    q: float
    v: float

    def __post_init__(self) -> None:
        _check_params("GammaGammaModel", p=self.p, q=self.q, v=self.v)

    @classmethod
    def fit(
        cls, frequency: npt.ArrayLike, monetary_value: npt.ArrayLike, *, penalizer: float = 0.0
    ) -> GammaGammaModel:
        """Maximum-likelihood fit on the customers with frequency > 0 (the others carry no spend data).

        ``monetary_value`` is the mean spend of each customer's repeat purchases. ``penalizer``
        adds ``penalizer * sum(log(param)**2)`` to the mean negative log-likelihood, with v
        measured in units of the mean monetary value (so the penalty does not depend on the
        currency); 0 gives the plain MLE.
        """
        x, m = _check_fm(frequency, monetary_value, for_fit=True)
        pen = _check_penalizer(penalizer)
        keep = x.ravel() > 0
        x, m = x.ravel()[keep], m.ravel()[keep]
        scale = float(m.mean())  # money rescaled so the mean is 1
        ms = m / scale
        n = x.size

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            p, q, v = np.exp(theta)
            ll, g = _gg_loglik_and_grad(p, q, v, x, ms, grad=True)
            assert g is not None
            f = -ll.sum() / n + pen * float(theta @ theta)
            if not np.isfinite(f):
                return float("inf"), np.zeros_like(theta)
            return float(f), -(g.sum(axis=1) / n) * np.exp(theta) + 2.0 * pen * theta

        # Starting points: q from the spread of customer means (CV^2 of p/nu is 1/(q-2)), then v so
        # that the population mean p v / (q - 1) matches the observed mean (1 after rescaling).
        cv2 = float(ms.var() / max(ms.mean() ** 2, 1e-12))
        q0 = float(np.clip(2.0 + 1.0 / max(cv2, 1e-3), 2.5, 50.0))
        starts = [np.log([p0, q0, (q0 - 1.0) / p0]) for p0 in (1.0, 5.0)]
        starts.append(np.log([2.0, 3.0, 1.0]))
        theta = _minimise(objective, starts, "GammaGammaModel")
        p, q, v = np.exp(theta)
        return cls(p=float(p), q=float(q), v=float(v * scale))

    def log_likelihood(self, frequency: npt.ArrayLike, monetary_value: npt.ArrayLike) -> np.ndarray:
        """Per-customer log-likelihood of the mean repeat spend; 0 for customers with frequency 0."""
        x, m = _check_fm(frequency, monetary_value)
        has = x > 0
        ll, _ = _gg_loglik_and_grad(
            self.p, self.q, self.v, np.where(has, x, 1.0), np.where(has, m, 1.0), grad=False
        )
        return np.where(has, ll, 0.0)

    @property
    def population_mean_spend(self) -> float:
        """p v / (q - 1); infinite when q <= 1 (the fitted spend distribution has no mean)."""
        return self.p * self.v / (self.q - 1.0) if self.q > 1.0 else math.inf

    def expected_spend(self, frequency: npt.ArrayLike, monetary_value: npt.ArrayLike) -> np.ndarray:
        """E[mean transaction value | x purchases with mean m] = p (v + x m) / (p x + q - 1).

        A weighted average of the population mean p v / (q - 1) and the customer's own mean m, with
        weight p x / (p x + q - 1) on m: few purchases are shrunk hard towards the population,
        many barely. Customers with frequency 0 get the population mean (their monetary_value is
        ignored).
        """
        x, m = _check_fm(frequency, monetary_value)
        m = np.where(x > 0, m, 0.0)
        if self.q <= 1.0 and (x == 0).any():
            raise ValueError(
                f"GammaGammaModel: expected q > 1 to predict spend for customers with frequency 0 "
                f"(population mean p v / (q - 1)), got q={self.q!r}"
            )
        return self.p * (self.v + x * m) / (self.p * x + self.q - 1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable parameters, for saving with a model artifact."""
        return {"model": "GammaGammaModel", "p": self.p, "q": self.q, "v": self.v}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GammaGammaModel:
        """Inverse of ``to_dict``; raises ValueError on missing or invalid parameters."""
        return cls(**_params_from_dict("GammaGammaModel", d, ("p", "q", "v")))
