"""The BG/NBD purchase model (Fader, Hardie & Lee 2005, "Counting your customers the easy way").

Conventions and fitting: see :mod:`patron.training.customer.btyd`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import betaln, digamma, expit, gammaln, hyp2f1

from patron.training.customer.btyd import (
    check_params,
    check_penalizer,
    check_rft,
    check_t,
    minimise,
    params_from_dict,
)

# Within this distance of a == 1 the closed form for expected purchases divides 0 by 0; there it
# is evaluated on both sides and averaged (the function is smooth in a).
_A_NEAR_ONE = 1e-5


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
        check_params("BetaGeoModel", r=self.r, alpha=self.alpha, a=self.a, b=self.b)

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
        x, tx, age = check_rft(frequency, recency, T, for_fit=True)
        pen = check_penalizer(penalizer)
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
        theta = minimise(objective, starts, "BetaGeoModel")
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
        x, tx, age = check_rft(frequency, recency, T)
        ll, _ = _bgnbd_loglik_and_grad(self.r, self.alpha, self.a, self.b, x, tx, age, grad=False)
        return ll

    def p_alive(self, frequency: npt.ArrayLike, recency: npt.ArrayLike, T: npt.ArrayLike) -> np.ndarray:
        """P(still a customer at T | history) = 1 / (1 + [x>0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x)).

        Exactly 1 for customers without repeat purchases: in BG/NBD dropout can only happen right
        after a purchase, so someone who never bought again has had no chance to leave yet.
        Computed as a logistic of the log-odds so a long silence after many purchases underflows
        cleanly to 0 instead of overflowing.
        """
        x, tx, age = check_rft(frequency, recency, T)
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
        horizon = check_t(t)
        x, tx, age = check_rft(frequency, recency, T)
        horizon, x, tx, age = np.broadcast_arrays(horizon, x, tx, age)
        s = horizon / (self.alpha + age)
        given_alive = _expected_repeat_given_alive(s, self.r, self.a, self.b, x)
        return self.p_alive(x, tx, age) * given_alive

    def expected_purchases_new_customer(self, t: npt.ArrayLike) -> np.ndarray:
        """E[repeat purchases in (0, t]] for a customer who made a first purchase at time 0 (eq. 7).

        Useful to compare the model with a cohort's cumulative repeat purchases over time.
        """
        horizon = check_t(t)
        s = horizon / self.alpha
        return _expected_repeat_given_alive(s, self.r, self.a, self.b, np.zeros_like(s))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable parameters, for saving with a model artifact."""
        return {"model": "BetaGeoModel", "r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BetaGeoModel:
        """Inverse of ``to_dict``; raises ValueError on missing or invalid parameters."""
        return cls(**params_from_dict("BetaGeoModel", d, ("r", "alpha", "a", "b")))
