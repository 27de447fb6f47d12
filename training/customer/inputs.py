"""The two views of a customer's features that the churn and LTV models read: a smooth log-scale
one for the linear models, a raw one for the trees.

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

import numpy as np
import pandas as pd

from patron.training.customer.columns import BTYD, HISTORY, RAW, Cols, as_columns, column
from patron.training.customer.history import PurchaseHistory

# Tree inputs: the behaviour summary (cumulative counts included: within the range seen in training
# they carry real information) plus the purchase-history outputs and two rates.
TREE = [c for c in RAW if c not in BTYD] + HISTORY + ["order_rate_30d", "overdue"]
# Linear inputs: log-scaled, so that counts keep their meaning as histories grow longer.
LOG = ["log_recency", "log_frequency", "log_monetary", "log_tenure", "log_orders_90d", "log_orders_30d",
       "log_interorder", "log_overdue", "log_p_alive", "log_expected_orders", "log_order_value",
       "log_order_rate", "log_products", "log_basket_lines", "tenure_censored", "log_tenure_if_censored",
       "log_active_weeks_13", "log_active_weeks_26", "log_decayed_30", "log_decayed_90"]
# Linear terms whose sign is known: +1 may only raise the risk, -1 only lower it.
SIGNS = {"log_recency": 1, "log_overdue": 1, "log_p_alive": -1, "log_expected_orders": -1}


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
    cols = {c: column(f, c) for c in (*RAW, *HISTORY, "order_rate_30d", "overdue")}
    return pd.DataFrame(log_matrix(cols), columns=LOG, index=f.index)


def tree_features(f: pd.DataFrame, countries: list[str]) -> pd.DataFrame:
    cols = {c: column(f, c) for c in TREE}
    cols["country"] = f["country"].fillna("").astype(str).to_numpy(dtype=object)
    return pd.DataFrame(tree_matrix(cols, countries), columns=[*TREE, "country_code"], index=f.index)


def frequent_countries(frame: pd.DataFrame, min_customers: int = 20) -> list[str]:
    """Countries with at least ``min_customers`` rows, most common first."""
    counts = frame["country"].value_counts()
    counts = counts[counts >= min_customers]
    return sorted(counts.index, key=lambda c: (-counts[c], c))


def by_snapshot(frame: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    """Each snapshot's rows with purchase-history outputs from a model fitted on that snapshot:
    the same as at prediction time, when the model is fitted on today's customers."""
    if "snapshot" not in frame.columns:
        return with_history(frame, PurchaseHistory.fit(frame), horizon_days)
    parts = [with_history(g, PurchaseHistory.fit(g), horizon_days) for _, g in frame.groupby("snapshot", sort=True)]
    return pd.concat(parts).loc[frame.index]
