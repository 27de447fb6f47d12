"""How the customer models and their baselines are scored: the same functions for the holdout,
the backtest and the gate."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from patron.training.customer.ltv import TIERS


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
