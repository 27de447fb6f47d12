"""Lifetime value within the horizon: predicted spend and orders, probability of being active,
expected next order date, and a tier.

Two models: gradient-boosted trees with a Poisson loss (spend and order counts are non-negative
and heavy-tailed; the Poisson deviance fits their scale without a log transform that would
under-predict the big spenders) over the ltv_v1 features plus the BG/NBD + Gamma-Gamma outputs;
and, when the shop's history is too short for any labelled snapshot, BG/NBD + Gamma-Gamma alone,
which need no labels.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.ensemble import HistGradientBoostingRegressor

from training.base import ModelCard, ModelLoadError, load_estimator, save_estimator
from training.churn import NUMERIC as CHURN_NUMERIC

FEATURE_SERVICE = "ltv_v1"
NUMERIC = CHURN_NUMERIC + ["past_spend"]
FEATURES = NUMERIC + ["country_code"]
TIERS = ("platinum", "gold", "silver", "bronze")
# Share of customers in each tier, best first: the top 5% are platinum, the next 15% gold, ...
DEFAULT_TIER_SHARES = (0.05, 0.15, 0.30, 0.50)


def tier_cutoffs(values: np.ndarray, shares: tuple[float, ...] = DEFAULT_TIER_SHARES) -> list[float]:
    """Value thresholds so that the given shares of ``values`` fall in each tier (best first)."""
    if len(shares) != len(TIERS) or abs(sum(shares) - 1) > 1e-6 or min(shares) <= 0:
        raise ValueError(f"tier shares must be {len(TIERS)} positive numbers summing to 1, got {shares}")
    qs = np.cumsum(shares)[:-1]
    return [float(np.quantile(values, 1 - q)) for q in qs]


def assign_tier(values: np.ndarray | float, cutoffs: list[float]) -> np.ndarray:
    """A value at or above a cut-off belongs to the better tier."""
    v = np.asarray(values, dtype=float)
    out = np.full(v.shape, TIERS[-1], dtype=object)
    for name, cut in reversed(list(zip(TIERS[:-1], cutoffs))):
        out[v >= cut] = name
    return out


@dataclass
class LTVModel:
    spend_model: HistGradientBoostingRegressor | None = None
    orders_model: HistGradientBoostingRegressor | None = None
    countries: list[str] = field(default_factory=list)
    cutoffs: list[float] = field(default_factory=list)
    horizon_days: int = 90
    label_free: bool = False  # BG/NBD + Gamma-Gamma only
    kind: str = "ltv"

    def matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in NUMERIC + ["country"] if c not in frame.columns]
        if missing:
            raise ValueError(f"LTV model needs columns {missing}, the frame has {sorted(frame.columns)}")
        x = frame[NUMERIC].astype(float).copy()
        codes = {c: i for i, c in enumerate(self.countries)}
        x["country_code"] = frame["country"].map(codes).astype(float)
        return x[FEATURES]

    def fit(self, frame: pd.DataFrame, *, seed: int = 0) -> "LTVModel":
        counts = frame["country"].value_counts()
        self.countries = sorted(counts[counts >= 20].index)
        x = self.matrix(frame)
        cat = [c == "country_code" for c in FEATURES]

        def hgb() -> HistGradientBoostingRegressor:
            return HistGradientBoostingRegressor(
                loss="poisson",
                learning_rate=0.05,
                max_iter=300,
                max_leaf_nodes=15,
                min_samples_leaf=40,
                l2_regularization=1.0,
                categorical_features=cat,
                random_state=seed,
            )

        self.spend_model = hgb().fit(x, frame["spend"].clip(lower=0))
        self.orders_model = hgb().fit(x, frame["orders"].clip(lower=0))
        self.label_free = False
        return self

    def predict(self, frame: pd.DataFrame, as_of: dt.datetime) -> pd.DataFrame:
        if self.label_free:
            value = frame["bg_expected_value"].to_numpy(dtype=float)
            orders = frame["bg_expected_orders"].to_numpy(dtype=float)
        else:
            if self.spend_model is None:
                raise RuntimeError("LTV model is not fitted")
            x = self.matrix(frame)
            value = self.spend_model.predict(x)
            orders = self.orders_model.predict(x)
        p_alive = frame["bg_p_alive"].to_numpy(dtype=float)
        # Expected wait for the next order: the horizon spread over the expected orders in it.
        # Beyond a year the date says nothing useful; leave it empty.
        wait = np.where(orders > 1e-6, self.horizon_days / np.maximum(orders, 1e-6), np.inf)
        next_date = [
            (pd.Timestamp(as_of) + pd.Timedelta(days=float(w))).date().isoformat() if w <= 365 else None for w in wait
        ]
        out = pd.DataFrame(
            {
                "customer_id": frame["customer_id"].to_numpy(),
                "predicted_value": value,
                "predicted_orders": orders,
                "p_alive": p_alive,
                "expected_next_order_date": next_date,
            }
        )
        if self.cutoffs:
            out["tier"] = assign_tier(value, self.cutoffs)
        return out

    def set_tiers(self, predicted_values: np.ndarray, shares: tuple[float, ...] = DEFAULT_TIER_SHARES) -> None:
        self.cutoffs = tier_cutoffs(predicted_values, shares)

    def save(self, directory: Path, card: ModelCard) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if not self.label_free:
            save_estimator(self.spend_model, directory / "spend.skops")
            save_estimator(self.orders_model, directory / "orders.skops")
        (directory / "ltv.json").write_text(
            json.dumps(
                {
                    "countries": self.countries,
                    "cutoffs": self.cutoffs,
                    "horizon_days": self.horizon_days,
                    "label_free": self.label_free,
                    "features": FEATURES,
                }
            )
        )
        card.save(directory)

    @classmethod
    def load(cls, directory: Path, feature_service: str | None = FEATURE_SERVICE) -> "LTVModel":
        directory = Path(directory)
        ModelCard.load(directory, kind="ltv", feature_service=feature_service)
        try:
            meta = json.loads((directory / "ltv.json").read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{directory}: unreadable ltv.json ({exc})") from exc
        if meta.get("features") != FEATURES:
            raise ModelLoadError(f"{directory}: trained on features {meta.get('features')}, this code uses {FEATURES}")
        m = cls(countries=meta["countries"], cutoffs=meta["cutoffs"], horizon_days=meta["horizon_days"], label_free=meta["label_free"])
        if not m.label_free:
            m.spend_model = load_estimator(directory / "spend.skops")
            m.orders_model = load_estimator(directory / "orders.skops")
        return m


def value_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Rank quality (Spearman), revenue captured by the predicted top 10%, and error."""
    actual = np.asarray(actual, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    rho = spearmanr(predicted, actual).statistic
    order = np.argsort(-predicted, kind="stable")
    top = order[: max(1, int(round(len(order) * 0.10)))]
    total = actual.sum()
    return {
        "spearman": float(rho),
        "top10_revenue_share": float(actual[top].sum() / total) if total > 0 else float("nan"),
        "mae": float(np.mean(np.abs(actual - predicted))),
    }


def tier_table(actual: np.ndarray, tiers: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame({"tier": tiers, "actual": actual})
    t = df.groupby("tier")["actual"].agg(customers="size", mean_actual_spend="mean", total_actual_spend="sum")
    return t.reindex([x for x in TIERS if x in t.index])
