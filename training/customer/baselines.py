"""The simple methods an analyst would use instead of the customer models: every model is compared
with them on the same rows."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def recency_baseline(frame: pd.DataFrame) -> np.ndarray:
    """Score = days since the last order: the simplest churn signal."""
    return frame["recency_days"].to_numpy(dtype=float)


def rfm_logistic(train: pd.DataFrame) -> Callable[[pd.DataFrame], np.ndarray]:
    """Logistic regression on log recency, frequency and monetary value."""

    def rfm(frame: pd.DataFrame) -> np.ndarray:
        return np.log1p(frame[["recency_days", "frequency", "monetary_total"]].clip(lower=0).astype(float).to_numpy())

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(rfm(train), train["churned"])
    return lambda frame: model.predict_proba(rfm(frame))[:, 1]
