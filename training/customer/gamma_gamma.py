"""The Gamma-Gamma spend model (Fader, Hardie & Lee 2005, "RFM and CLV: using iso-value curves").

Conventions and fitting: see :mod:`patron.training.customer.btyd`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import digamma, gammaln

from patron.training.customer.btyd import check_fm, check_params, check_penalizer, minimise, params_from_dict

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
        check_params("GammaGammaModel", p=self.p, q=self.q, v=self.v)

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
        x, m = check_fm(frequency, monetary_value, for_fit=True)
        pen = check_penalizer(penalizer)
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
        theta = minimise(objective, starts, "GammaGammaModel")
        p, q, v = np.exp(theta)
        return cls(p=float(p), q=float(q), v=float(v * scale))

    def log_likelihood(self, frequency: npt.ArrayLike, monetary_value: npt.ArrayLike) -> np.ndarray:
        """Per-customer log-likelihood of the mean repeat spend; 0 for customers with frequency 0."""
        x, m = check_fm(frequency, monetary_value)
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
        x, m = check_fm(frequency, monetary_value)
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
        return cls(**params_from_dict("GammaGammaModel", d, ("p", "q", "v")))
