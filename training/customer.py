"""What the churn and LTV models share: the purchase-history model, the two views of a customer's
features (a smooth log-scale one for linear models, a raw one for trees) and persistence helpers.

Why two model families in each of churn and LTV: labelled snapshots always see a shorter history
than the customers scored today (a label window must end before ``as_of``), so a model must
extrapolate from short histories to long ones. Trees cannot: a customer with more orders than any
training customer lands in the same leaf as the most frequent of them. A logistic regression on
log-scaled counts extrapolates smoothly but misses interactions. Their average was better than
either, and than the RFM baseline, on every earlier split we measured (docs/model-quality.md).

The BG/NBD + Gamma-Gamma model is part of each customer model: fitted on the training snapshot's
purchase summaries (the ``btyd_*`` features), it turns a customer's frequency, recency and age into
P(alive), expected orders and expected spend. Because it is computed from online features at
prediction time, a purchase that updates the features updates these outputs too.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from patron.features.repo.feature_services import CUSTOMER_BEHAVIOUR
from patron.training import bgnbd
from patron.training.base import ModelLoadError

log = logging.getLogger(__name__)

DAYS_PER_UNIT = 7.0  # BG/NBD time unit: weeks, as in the literature
Cols = dict[str, np.ndarray]  # one array per input column: the scoring path's frame
BTYD = ["btyd_frequency", "btyd_recency_days", "btyd_age_days", "btyd_monetary"]
HISTORY = ["bg_p_alive", "bg_expected_orders", "bg_expected_value"]
RAW = [c for c in CUSTOMER_BEHAVIOUR if c != "country"]
# Tree inputs: the behaviour summary (cumulative counts included: within the range seen in training
# they carry real information) plus the purchase-history outputs and two rates.
TREE = [c for c in RAW if c not in BTYD] + HISTORY + ["order_rate_30d", "overdue"]
# Linear inputs: log-scaled, so that counts keep their meaning as histories grow longer.
LOG = ["log_recency", "log_frequency", "log_monetary", "log_tenure", "log_orders_90d", "log_orders_30d",
       "log_interorder", "log_overdue", "log_p_alive", "log_expected_orders", "log_order_value",
       "log_order_rate", "log_products", "log_basket_lines", "tenure_censored", "log_tenure_if_censored",
       "log_active_weeks_13", "log_active_weeks_26", "log_decayed_30", "log_decayed_90"]


def check_columns(frame: pd.DataFrame, needed: list[str], who: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"{who} needs columns {missing}; the frame has {sorted(frame.columns)}")


@dataclass
class PurchaseHistory:
    """BG/NBD (orders, P(alive)) and Gamma-Gamma (spend per order) fitted on one snapshot."""

    bg: bgnbd.BetaGeoModel
    gg: bgnbd.GammaGammaModel

    @classmethod
    def fit(cls, frame: pd.DataFrame) -> "PurchaseHistory":
        check_columns(frame, BTYD, "the purchase-history model")
        x, tx, age, m = _summary(frame)
        # A small penalty keeps the fit finite when dropout is barely identified (a young shop).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the fit's own "no dropout" notice
            bg = bgnbd.BetaGeoModel.fit(x, tx, age, penalizer=0.001)
        known = (x > 0) & (m > 0)
        if known.sum() >= 2:
            gg = bgnbd.GammaGammaModel.fit(x[known], m[known], penalizer=0.001)
        else:  # nobody came back yet: every customer is expected to spend the mean first order
            mean = float(frame["avg_order_value"].mean()) if "avg_order_value" in frame else 1.0
            gg = bgnbd.GammaGammaModel(p=1.0, q=2.0, v=max(mean, 1e-6))
        return cls(bg, gg)

    def outputs(self, data: "pd.DataFrame | Cols", horizon_days: float) -> "Cols":
        x, tx, age, m = _summary(data)
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
            return cls(bgnbd.BetaGeoModel.from_dict(d["bg"]), bgnbd.GammaGammaModel.from_dict(d["gg"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"unreadable purchase-history parameters ({exc})") from exc


def _summary(data: "pd.DataFrame | Cols") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x = _arr(data, "btyd_frequency")
    age = _arr(data, "btyd_age_days") / DAYS_PER_UNIT
    tx = np.minimum(_arr(data, "btyd_recency_days") / DAYS_PER_UNIT, age)
    m = _arr(data, "btyd_monetary")
    # Unknown customers (no features) are scored as one-off buyers seen today: the least informed
    # prior the model has, instead of NaNs that would fail the whole batch.
    bad = ~(np.isfinite(x) & np.isfinite(tx) & np.isfinite(age)) | (x < 0)
    x = np.where(bad, 0.0, np.floor(x))
    age = np.where(bad | (age <= 0), 1e-3, age)
    tx = np.where(bad | (x == 0), 0.0, np.clip(tx, 0.0, age))
    m = np.where(np.isfinite(m) & (m > 0), m, 0.0)
    return x, tx, age, m


def _arr(data: "pd.DataFrame | Cols", col: str) -> np.ndarray:
    values = data[col]
    if isinstance(values, pd.Series):
        return values.to_numpy(dtype=float, na_value=np.nan)
    return np.asarray(values, dtype=float)


def as_columns(frame: pd.DataFrame) -> "Cols":
    """The model inputs of a frame as plain arrays: the scoring path works on these, without pandas."""
    check_columns(frame, [*RAW, "country"], "the customer models")
    cols: Cols = {c: _arr(frame, c) for c in RAW}
    cols["country"] = frame["country"].fillna("").astype(str).to_numpy(dtype=object)
    return cols


def enrich(cols: "Cols", history: PurchaseHistory, horizon_days: float) -> "Cols":
    """The inputs plus the purchase-history outputs and the derived rates both model families use."""
    out = dict(cols)
    out.update(history.outputs(cols, horizon_days))
    tenure = np.maximum(cols["tenure_days"], 30.0)
    out["order_rate_30d"] = cols["frequency"] / tenure * 30
    gap = np.maximum(cols["mean_interorder_days"], 1.0)
    # how overdue the next order is, in the customer's own rhythm; one-off buyers have no rhythm
    out["overdue"] = np.minimum(cols["recency_days"] / gap, 50.0)
    return out


def log_matrix(c: "Cols") -> np.ndarray:
    """The smooth view (input of the linear models), columns :data:`LOG`; ``c`` from :func:`enrich`."""

    def lg(x: np.ndarray) -> np.ndarray:
        return np.nan_to_num(np.log1p(np.maximum(x, 0.0)), nan=0.0)

    tenure = lg(c["tenure_days"])
    censored = np.nan_to_num(c["tenure_censored"], nan=0.0)
    interorder = c["mean_interorder_days"]
    x = {
        "log_recency": lg(c["recency_days"]),
        "log_frequency": lg(c["frequency"]),
        "log_monetary": lg(c["monetary_total"]),
        "log_tenure": tenure,
        "log_orders_90d": lg(c["orders_90d"]),
        "log_orders_30d": lg(c["orders_30d"]),
        "log_interorder": lg(np.where(np.isnan(interorder), c["tenure_days"], interorder)),
        "log_overdue": lg(np.nan_to_num(c["overdue"], nan=1.0)),
        "log_p_alive": np.nan_to_num(np.log(np.clip(c["bg_p_alive"], 1e-4, 1.0)), nan=0.0),
        "log_expected_orders": lg(c["bg_expected_orders"]),
        "log_order_value": lg(c["avg_order_value"]),
        "log_order_rate": lg(c["order_rate_30d"]),
        "log_products": lg(c["distinct_products"]),
        "log_basket_lines": lg(c["avg_basket_lines"]),
        "tenure_censored": censored,
        "log_tenure_if_censored": censored * tenure,
        "log_active_weeks_13": lg(c["active_weeks_13"]),
        "log_active_weeks_26": lg(c["active_weeks_26"]),
        "log_decayed_30": lg(c["decayed_orders_30"]),
        "log_decayed_90": lg(c["decayed_orders_90"]),
    }
    return np.column_stack([x[k] for k in LOG])


def tree_matrix(c: "Cols", countries: list[str]) -> np.ndarray:
    """The raw view (input of the trees), columns :data:`TREE` + country_code. A country is its rank
    among the frequent countries (0 = the most common), so one split separates the home market;
    unseen countries become missing."""
    codes = {name: float(i) for i, name in enumerate(countries)}
    country = np.array([codes.get(x, np.nan) for x in c["country"]], dtype=float)
    return np.column_stack([*(np.asarray(c[k], dtype=float) for k in TREE), country])


# DataFrame views of the same, for training and analysis.


def with_history(frame: pd.DataFrame, history: PurchaseHistory, horizon_days: float) -> pd.DataFrame:
    out = frame.copy()
    extra = enrich(as_columns(frame), history, horizon_days)
    for k in (*HISTORY, "order_rate_30d", "overdue"):
        out[k] = extra[k]
    return out


def log_features(f: pd.DataFrame) -> pd.DataFrame:
    cols = {c: _arr(f, c) for c in (*RAW, *HISTORY, "order_rate_30d", "overdue")}
    return pd.DataFrame(log_matrix(cols), columns=LOG, index=f.index)


def tree_features(f: pd.DataFrame, countries: list[str]) -> pd.DataFrame:
    cols = {c: _arr(f, c) for c in TREE}
    cols["country"] = f["country"].fillna("").astype(str).to_numpy(dtype=object)
    return pd.DataFrame(tree_matrix(cols, countries), columns=[*TREE, "country_code"], index=f.index)


def frequent_countries(frame: pd.DataFrame, min_customers: int = 20) -> list[str]:
    """Countries with at least ``min_customers`` rows, most common first."""
    counts = frame["country"].value_counts()
    counts = counts[counts >= min_customers]
    return sorted(counts.index, key=lambda c: (-counts[c], c))


class LinearScorer:
    """A fitted StandardScaler + linear model pipeline as plain arrays: the same numbers as
    ``pipeline.decision_function`` / ``predict`` without scikit-learn's per-call checks."""

    def __init__(self, pipeline) -> None:
        scaler, model = pipeline[0], pipeline[-1]
        self.mean = np.asarray(scaler.mean_, float)
        self.scale = np.asarray(scaler.scale_, float)
        coef = np.asarray(model.coef_, float)
        self.coef = coef.ravel()
        self.intercept = float(np.ravel(model.intercept_)[0])

    def decision(self, X: np.ndarray) -> np.ndarray:
        return ((np.asarray(X, float) - self.mean) / self.scale) @ self.coef + self.intercept

    def proba(self, X: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.decision(X)))


class CalibratedTrees:
    """``CalibratedClassifierCV(HistGradientBoostingClassifier, method="isotonic", ensemble=False)``
    as a :class:`~training.trees.TreeEnsemble` and the isotonic map of its raw scores."""

    def __init__(self, calibrated) -> None:
        from patron.training.trees import TreeEnsemble

        (inner,) = calibrated.calibrated_classifiers_
        self.trees = TreeEnsemble.from_sklearn(inner.estimator)
        (iso,) = inner.calibrators
        self.x = np.asarray(iso.X_thresholds_, float)
        self.y = np.asarray(iso.y_thresholds_, float)

    def proba(self, X: np.ndarray) -> np.ndarray:
        return np.interp(self.trees.predict_raw(X), self.x, self.y)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: missing or unreadable ({exc})") from exc
