"""The purchase-history part of every customer model: BG/NBD (orders, P(alive)) and Gamma-Gamma
(spend per order), fitted on one snapshot's purchase summaries (the ``btyd_*`` features).

Because these outputs are computed from online features at prediction time, a purchase that
updates the features updates them too.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from patron.training.base import ModelLoadError
from patron.training.customer.beta_geo import BetaGeoModel
from patron.training.customer.columns import BTYD, Cols, check_columns, column
from patron.training.customer.gamma_gamma import GammaGammaModel

DAYS_PER_UNIT = 7.0  # BG/NBD time unit: weeks, as in the literature


@dataclass
class PurchaseHistory:
    """BG/NBD (orders, P(alive)) and Gamma-Gamma (spend per order) fitted on one snapshot."""

    bg: BetaGeoModel
    gg: GammaGammaModel

    @classmethod
    def fit(cls, frame: pd.DataFrame) -> "PurchaseHistory":
        check_columns(frame, BTYD, "the purchase-history model")
        x, tx, age, m = summary(frame)
        # A small penalty keeps the fit finite when dropout is barely identified (a young shop).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the fit's own "no dropout" notice
            bg = BetaGeoModel.fit(x, tx, age, penalizer=0.001)
        known = (x > 0) & (m > 0)
        if known.sum() >= 2:
            gg = GammaGammaModel.fit(x[known], m[known], penalizer=0.001)
        else:  # nobody came back yet: every customer is expected to spend the mean first order
            mean = float(frame["avg_order_value"].mean()) if "avg_order_value" in frame else 1.0
            gg = GammaGammaModel(p=1.0, q=2.0, v=max(mean, 1e-6))
        return cls(bg, gg)

    def outputs(self, data: "pd.DataFrame | Cols", horizon_days: float) -> "Cols":
        x, tx, age, m = summary(data)
        orders = self.bg.expected_purchases(horizon_days / DAYS_PER_UNIT, x, tx, age)
        alive = self.bg.p_alive(x, tx, age)
        # repeat purchases without a known spend: the population's mean spend, as for newcomers
        known = (x > 0) & (m > 0)
        spend = self.gg.expected_spend(np.where(known, x, 0.0), np.where(known, m, 0.0))
        return {"bg_p_alive": alive, "bg_expected_orders": orders, "bg_expected_value": orders * spend}

    def to_dict(self) -> dict:
        return {"bg": self.bg.to_dict(), "gg": self.gg.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "PurchaseHistory":
        try:
            return cls(BetaGeoModel.from_dict(d["bg"]), GammaGammaModel.from_dict(d["gg"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"unreadable purchase-history parameters ({exc})") from exc


def summary(data: "pd.DataFrame | Cols") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x = column(data, "btyd_frequency")
    age = column(data, "btyd_age_days") / DAYS_PER_UNIT
    tx = np.minimum(column(data, "btyd_recency_days") / DAYS_PER_UNIT, age)
    m = column(data, "btyd_monetary")
    # Unknown customers (no features) are scored as one-off buyers seen today: the least informed
    # prior the model has, instead of NaNs that would fail the whole batch.
    bad = ~(np.isfinite(x) & np.isfinite(tx) & np.isfinite(age)) | (x < 0)
    x = np.where(bad, 0.0, np.floor(x))
    age = np.where(bad | (age <= 0), 1e-3, age)
    tx = np.where(bad | (x == 0), 0.0, np.clip(tx, 0.0, age))
    m = np.where(np.isfinite(m) & (m > 0), m, 0.0)
    return x, tx, age, m
