"""Evaluation plots logged to MLflow (matplotlib's object API: no global backend is touched)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_curve


def roc(y: np.ndarray, scores: Mapping[str, np.ndarray]) -> Figure:
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Churn ROC (holdout)")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def calibration(y: np.ndarray, p: np.ndarray) -> Figure:
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    frac, mean = calibration_curve(y, p, n_bins=10, strategy="quantile")
    ax.plot(mean, frac, "o-", label="model")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect")
    ax.set(xlabel="predicted churn probability", ylabel="observed churn rate", title="Calibration (holdout)")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def gains(y: np.ndarray, scores: Mapping[str, np.ndarray], title: str) -> Figure:
    """Cumulative share of positives (or value) captured when customers are taken best-scored first."""
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    total = y.sum()
    for name, s in scores.items():
        order = np.argsort(-s, kind="stable")
        captured = np.cumsum(y[order]) / total
        ax.plot(np.arange(1, len(y) + 1) / len(y), captured, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="share of customers (best scored first)", ylabel="share captured", title=title)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def deciles(actual: np.ndarray, predicted: np.ndarray) -> Figure:
    df = pd.DataFrame({"a": actual, "p": predicted})
    df["decile"] = pd.qcut(df["p"].rank(method="first"), 10, labels=False) + 1
    g = df.groupby("decile")[["a", "p"]].mean()
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.bar(g.index - 0.2, g["p"], width=0.4, label="predicted")
    ax.bar(g.index + 0.2, g["a"], width=0.4, label="actual")
    ax.set(xlabel="decile of predicted value (10 = highest)", ylabel="mean spend in horizon", title="LTV by decile (holdout)")
    ax.legend(fontsize=8)
    return fig


def recall_curve(curves: Mapping[str, Mapping[int, float]], title: str) -> Figure:
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for name, c in curves.items():
        ks = sorted(c)
        ax.plot(ks, [c[k] for k in ks], "o-", label=name, ms=3)
    ax.set(xlabel="k", ylabel="recall@k", title=title)
    ax.legend(fontsize=8)
    return fig
