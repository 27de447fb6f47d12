"""Lifetime value within the horizon: predicted spend and orders, probability of being active,
expected next order date, and a tier.

Predicted spend is the average of two estimates over the ltv_v2 features (see
:mod:`patron.training.customer.inputs` for why two model families):

* a two-part model: P(any order in the horizon) from a logistic regression on log-scaled
  behaviour, times the expected spend of a buyer from a linear model of log spend (retransformed
  with Duan's smearing factor, so that it estimates the mean, not the geometric mean);
* gradient-boosted trees with a Poisson loss (spend is non-negative and heavy-tailed; the Poisson
  deviance fits its scale without a log transform that would under-predict the big spenders).

Orders come from Poisson trees, P(alive) from BG/NBD. A shop too young for any labelled snapshot
gets BG/NBD + Gamma-Gamma alone, which need no labels.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from patron.features.catalog import LTV_SERVICE
from patron.training.base import ModelCard, ModelLoadError, load_estimator, read_json, save_estimator, write_json
from patron.training.customer.columns import RAW, as_columns, check_columns
from patron.training.customer.history import PurchaseHistory
from patron.training.customer.inputs import (
    LOG,
    SIGNS,
    TREE,
    by_snapshot,
    enrich,
    frequent_countries,
    log_features,
    log_matrix,
    tree_features,
    tree_matrix,
)
from patron.training.customer.linear import LinearScorer, fit_signed_logistic
from patron.training.trees import TreeEnsemble

log = logging.getLogger(__name__)

FEATURE_SERVICE = LTV_SERVICE
FEATURES = [*TREE, "country_code"]
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
    horizon_days: int = 90
    history: PurchaseHistory | None = None
    buyer: Pipeline | None = None  # P(any order in the horizon), logistic on the log view
    buyer_columns: list[str] = field(default_factory=list)
    buyer_spend: Pipeline | None = None  # E[log spend | ordered], linear on the log view
    smearing: float = 1.0
    log_spend_range: tuple[float, float] = (0.0, 0.0)  # of the buyers in training: no extrapolation
    spend_trees: BaseEstimator | None = None
    orders_trees: BaseEstimator | None = None
    countries: list[str] = field(default_factory=list)
    cutoffs: list[float] = field(default_factory=list)
    label_free: bool = False  # BG/NBD + Gamma-Gamma only
    kind: str = "ltv"

    def fit(self, labelled: pd.DataFrame, current: pd.DataFrame, *, seed: int = 0) -> "LTVModel":
        """Fit on labelled snapshots (``spend`` and ``orders`` in the horizon after each snapshot);
        the purchase-history model is fitted on ``current``, the customers to be scored."""
        check_columns(labelled, [*RAW, "country", "spend", "orders"], "the LTV model")
        train = by_snapshot(labelled, self.horizon_days)
        spend = train["spend"].clip(lower=0).to_numpy(dtype=float)
        bought = spend > 0
        if bought.all() or not bought.any():
            raise ValueError("LTV labels need customers with and without orders in the horizon")
        xl = log_features(train)
        self.buyer, self.buyer_columns = fit_signed_logistic(xl, (~bought).astype(int), SIGNS)
        log_spend = np.log(spend[bought])
        self.buyer_spend = make_pipeline(StandardScaler(), Ridge(alpha=10.0)).fit(xl[bought].to_numpy(), log_spend)
        self.log_spend_range = (float(log_spend.min()), float(log_spend.max()))
        residuals = log_spend - self.buyer_spend.predict(xl[bought].to_numpy())
        self.smearing = float(np.mean(np.exp(residuals)))
        self.countries = frequent_countries(train)
        xt = tree_features(train, self.countries)

        def poisson_trees() -> HistGradientBoostingRegressor:
            return HistGradientBoostingRegressor(
                loss="poisson",
                learning_rate=0.05,
                max_iter=300,
                max_leaf_nodes=15,
                min_samples_leaf=40,
                l2_regularization=1.0,
                random_state=seed,
            )

        self.spend_trees = poisson_trees().fit(xt, spend)
        self.orders_trees = poisson_trees().fit(xt, train["orders"].clip(lower=0))
        self.history = PurchaseHistory.fit(current)
        self.label_free = False
        self._compile()
        return self

    def _compile(self) -> None:
        """Plain-array copies of the fitted estimators, for scoring in the request path."""
        self._buyer = LinearScorer(self.buyer)
        self._buyer_idx = [LOG.index(c) for c in self.buyer_columns]
        self._buyer_spend = LinearScorer(self.buyer_spend)
        self._spend_trees = TreeEnsemble.from_sklearn(self.spend_trees)
        self._orders_trees = TreeEnsemble.from_sklearn(self.orders_trees)

    def fit_label_free(self, current: pd.DataFrame) -> "LTVModel":
        self.history = PurchaseHistory.fit(current)
        self.label_free = True
        return self

    def predict(self, frame: pd.DataFrame, as_of: dt.datetime | Sequence[dt.datetime] | np.ndarray) -> pd.DataFrame:
        if self.history is None:
            raise RuntimeError("LTV model is not fitted")
        f = enrich(as_columns(frame), self.history, self.horizon_days)
        if self.label_free:
            value = f["bg_expected_value"]
            orders = f["bg_expected_orders"]
        else:
            xl = log_matrix(f)
            p_buy = 1.0 - self._buyer.proba(xl[:, self._buyer_idx])
            # a linear model on the log scale extrapolates exponentially: keep it to the spends seen
            log_spend = np.clip(self._buyer_spend.decision(xl), *self.log_spend_range)
            two_part = p_buy * np.exp(log_spend) * self.smearing
            xt = tree_matrix(f, self.countries)
            value = 0.5 * (two_part + np.exp(self._spend_trees.predict_raw(xt)))  # Poisson trees: log link
            orders = np.exp(self._orders_trees.predict_raw(xt))
        p_alive = f["bg_p_alive"]
        # Expected wait for the next order: the horizon spread over the expected orders in it.
        # Beyond a year the date says nothing useful; leave it empty.
        wait = np.where(orders > 1e-6, self.horizon_days / np.maximum(orders, 1e-6), np.inf)
        # one moment for the batch, or one per row (features brought up to date by recent orders)
        if isinstance(as_of, dt.datetime):
            starts = [pd.Timestamp(as_of)] * len(wait)
        else:
            starts = list(pd.to_datetime(np.asarray(as_of), utc=True))
        next_date = [(s + pd.Timedelta(days=float(w))).date().isoformat() if w <= 365 else None for s, w in zip(starts, wait)]
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
            for name in ("buyer", "buyer_spend", "spend_trees", "orders_trees"):
                save_estimator(getattr(self, name), directory / f"{name}.skops")
        write_json(
            directory / "ltv.json",
            {
                "horizon_days": self.horizon_days,
                "history": self.history.to_dict(),
                "buyer_columns": self.buyer_columns,
                "smearing": self.smearing,
                "log_spend_range": list(self.log_spend_range),
                "countries": self.countries,
                "cutoffs": self.cutoffs,
                "label_free": self.label_free,
                "features": FEATURES,
                "log_features": LOG,
            },
        )
        card.save(directory)

    @classmethod
    def load(cls, directory: Path, feature_service: str | None = FEATURE_SERVICE) -> "LTVModel":
        directory = Path(directory)
        ModelCard.load(directory, kind="ltv", feature_service=feature_service)
        meta = read_json(directory / "ltv.json")
        if meta.get("features") != FEATURES or meta.get("log_features") != LOG:
            raise ModelLoadError(f"{directory}: trained on other features than this code computes; retrain it")
        m = cls(
            horizon_days=int(meta["horizon_days"]),
            history=PurchaseHistory.from_dict(meta["history"]),
            buyer_columns=list(meta["buyer_columns"]),
            smearing=float(meta["smearing"]),
            log_spend_range=tuple(meta["log_spend_range"]),
            countries=meta["countries"],
            cutoffs=meta["cutoffs"],
            label_free=bool(meta["label_free"]),
        )
        if not m.label_free:
            for name in ("buyer", "buyer_spend", "spend_trees", "orders_trees"):
                setattr(m, name, load_estimator(directory / f"{name}.skops"))
            m._compile()
        return m
