"""Churn: the probability that a customer makes no purchase within the horizon.

Gradient-boosted trees over the churn_v1 feature service plus the BG/NBD purchase-history outputs,
calibrated with isotonic regression so that the probability means what it says (0.7 = seven in
ten such customers do not come back). Monotonic constraints encode what must hold for any shop: a
longer time since the last order never lowers the risk, a higher BG/NBD probability of being alive
never raises it. Reason codes say which features push one customer's risk above a typical one's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from features.repo.feature_services import CUSTOMER_BEHAVIOUR
from training.base import ModelCard, ModelLoadError, load_estimator, save_estimator

log = logging.getLogger(__name__)

FEATURE_SERVICE = "churn_v1"
HISTORY = ["bg_p_alive", "bg_expected_orders", "bg_expected_value"]
NUMERIC = [c for c in CUSTOMER_BEHAVIOUR if c != "country"] + HISTORY
FEATURES = NUMERIC + ["country_code"]
MONOTONIC = {"recency_days": 1, "bg_p_alive": -1, "orders_30d": -1, "orders_90d": -1}
# Features a CRM user can act on, in words; reason codes are drawn from these.
REASON_TEXT = {
    "recency_days": "days since the last order",
    "frequency": "number of orders",
    "monetary_total": "total spend",
    "orders_90d": "orders in the last 90 days",
    "orders_30d": "orders in the last 30 days",
    "activity_trend": "order trend (last 90 days vs the 90 before)",
    "mean_interorder_days": "usual days between orders",
    "tenure_days": "days as a customer",
    "return_rate": "share of spend returned",
    "spend_90d": "spend in the last 90 days",
    "bg_p_alive": "purchase-pattern probability of still being active",
}
DEFAULT_BANDS = (0.35, 0.65)  # low < 0.35 <= medium < 0.65 <= high


def risk_band(p: np.ndarray | float, bands: tuple[float, float] = DEFAULT_BANDS) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    return np.where(p >= bands[1], "high", np.where(p >= bands[0], "medium", "low"))


@dataclass
class ChurnModel:
    classifier: CalibratedClassifierCV | None = None
    countries: list[str] = field(default_factory=list)
    medians: dict[str, float] = field(default_factory=dict)
    bands: tuple[float, float] = DEFAULT_BANDS
    label_free: bool = False  # BG/NBD only, for shops too young for any labelled snapshot
    kind: str = "churn"

    # ------------------------------------------------------------------ fit / predict
    def matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in NUMERIC + ["country"] if c not in frame.columns]
        if missing:
            raise ValueError(f"churn model needs columns {missing}, the frame has {sorted(frame.columns)}")
        x = frame[NUMERIC].astype(float).copy()
        codes = {c: i for i, c in enumerate(self.countries)}
        x["country_code"] = frame["country"].map(codes).astype(float)  # unseen country -> missing
        return x[FEATURES]

    def fit(self, frame: pd.DataFrame, *, seed: int = 0) -> "ChurnModel":
        counts = frame["country"].value_counts()
        self.countries = sorted(counts[counts >= 20].index)
        x = self.matrix(frame)
        y = frame["churned"].to_numpy()
        if len(np.unique(y)) < 2:
            raise ValueError(f"churn labels need both classes, got only {np.unique(y).tolist()}")
        cat = [c == "country_code" for c in FEATURES]
        base = HistGradientBoostingClassifier(
            learning_rate=0.05,
            max_iter=250,
            max_leaf_nodes=15,
            min_samples_leaf=40,
            l2_regularization=1.0,
            categorical_features=cat,
            monotonic_cst=[MONOTONIC.get(c, 0) for c in FEATURES],
            random_state=seed,
        )
        self.classifier = CalibratedClassifierCV(base, method="isotonic", cv=3).fit(x, y)
        # Reason codes compare a customer with a typical customer who stayed.
        stayed = x[y == 0]
        self.medians = {c: float(np.nanmedian(stayed[c])) for c in REASON_TEXT}
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        if self.label_free:
            # P(no purchase in the horizon) = P(dead) + P(alive) * P(no purchase | alive), with the
            # purchases of an alive customer taken as Poisson with BG/NBD's conditional mean.
            alive = frame["bg_p_alive"].to_numpy(dtype=float).clip(1e-6, 1)
            rate = frame["bg_expected_orders"].to_numpy(dtype=float) / alive
            return 1 - alive * (1 - np.exp(-rate))
        if self.classifier is None:
            raise RuntimeError("churn model is not fitted")
        return self.classifier.predict_proba(self.matrix(frame))[:, 1]

    def reasons(self, frame: pd.DataFrame, top: int = 3) -> list[list[dict]]:
        if self.label_free:
            return [[] for _ in range(len(frame))]
        return self._reasons(frame, top)

    def _reasons(self, frame: pd.DataFrame, top: int) -> list[list[dict]]:
        """Per customer, the features that on their own make the risk higher than a typical customer's.

        Start from a typical retained customer (training medians among those who stayed), put back one
        of this customer's values at a time, and measure the rise in probability. Unlike removing
        one feature at a time, this still names every cause when causes are redundant (a lapsed
        customer has a long recency AND no recent orders; either alone explains the risk).
        Model-agnostic and cheap: one extra batch prediction per feature.
        """
        x = self.matrix(frame)
        typical = x.copy()
        for f, med in self.medians.items():
            typical[f] = med
        p0 = self.classifier.predict_proba(typical)[:, 1]
        effects = {}
        for f in self.medians:
            x2 = typical.copy()
            x2[f] = x[f]
            effects[f] = self.classifier.predict_proba(x2)[:, 1] - p0
        eff = pd.DataFrame(effects)
        out = []
        for i in range(len(x)):
            row = eff.iloc[i]
            picks = row[row > 0.005].sort_values(ascending=False).head(top)
            out.append(
                [
                    {
                        "feature": f,
                        "description": REASON_TEXT[f],
                        "value": None if pd.isna(x.iloc[i][f]) else round(float(x.iloc[i][f]), 3),
                        "typical": round(self.medians[f], 3),
                        "effect": round(float(picks[f]), 4),
                    }
                    for f in picks.index
                ]
            )
        return out

    def score(self, frame: pd.DataFrame, *, with_reasons: bool = True) -> pd.DataFrame:
        p = self.predict_proba(frame)
        out = pd.DataFrame({"customer_id": frame["customer_id"].to_numpy(), "churn_probability": p, "risk_band": risk_band(p, self.bands)})
        if with_reasons:
            out["reasons"] = [json.dumps(r) for r in self.reasons(frame)]
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path, card: ModelCard) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if not self.label_free:
            save_estimator(self.classifier, directory / "classifier.skops")
        (directory / "churn.json").write_text(
            json.dumps(
                {
                    "countries": self.countries,
                    "medians": self.medians,
                    "bands": list(self.bands),
                    "features": FEATURES,
                    "label_free": self.label_free,
                }
            )
        )
        card.save(directory)

    @classmethod
    def load(cls, directory: Path, feature_service: str | None = FEATURE_SERVICE) -> "ChurnModel":
        directory = Path(directory)
        ModelCard.load(directory, kind="churn", feature_service=feature_service)
        try:
            meta = json.loads((directory / "churn.json").read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{directory}: unreadable churn.json ({exc})") from exc
        if meta.get("features") != FEATURES:
            raise ModelLoadError(f"{directory}: trained on features {meta.get('features')}, this code uses {FEATURES}")
        label_free = bool(meta.get("label_free", False))
        return cls(
            classifier=None if label_free else load_estimator(directory / "classifier.skops"),
            countries=meta["countries"],
            medians=meta["medians"],
            bands=tuple(meta["bands"]),
            label_free=label_free,
        )


# ---------------------------------------------------------------------- baselines and metrics


def recency_baseline(frame: pd.DataFrame) -> np.ndarray:
    """Score = days since the last order: the simplest churn signal."""
    return frame["recency_days"].to_numpy(dtype=float)


def rfm_logistic(train: pd.DataFrame) -> "callable":
    """Logistic regression on log recency, frequency and monetary value."""

    def rfm(frame: pd.DataFrame) -> np.ndarray:
        return np.log1p(frame[["recency_days", "frequency", "monetary_total"]].clip(lower=0).astype(float).to_numpy())

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(rfm(train), train["churned"])
    return lambda frame: model.predict_proba(rfm(frame))[:, 1]


def classification_metrics(y: np.ndarray, score: np.ndarray, *, probabilities: bool) -> dict[str, float]:
    m = {"roc_auc": float(roc_auc_score(y, score))}
    if probabilities:
        s = np.clip(score, 1e-6, 1 - 1e-6)
        m["brier"] = float(brier_score_loss(y, s))
        m["log_loss"] = float(log_loss(y, s))
    # lift of the riskiest decile: churn rate there over the base rate
    order = np.argsort(-score, kind="stable")
    top = order[: max(1, len(order) // 10)]
    m["top_decile_lift"] = float(y[top].mean() / max(y.mean(), 1e-9))
    return m
