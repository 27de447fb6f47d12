"""Fitted linear and tree models as plain arrays, for scoring in the request path, and the
sign-constrained logistic regression both customer models fit."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from patron.training.trees import TreeEnsemble


def fit_signed_logistic(x: pd.DataFrame, y: np.ndarray, signs: dict[str, int], C: float = 0.3) -> tuple[Pipeline, list[str]]:
    """Logistic regression on standardised inputs; a feature of known direction whose coefficient
    comes out with the wrong sign (collinearity does that) is dropped and the model refitted."""
    cols = list(x.columns)
    while True:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000)).fit(x[cols].to_numpy(), y)
        coef = dict(zip(cols, model[-1].coef_[0]))
        wrong = [c for c, s in signs.items() if c in coef and coef[c] * s < 0]
        if not wrong:
            return model, cols
        cols.remove(max(wrong, key=lambda c: abs(coef[c])))


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
        (inner,) = calibrated.calibrated_classifiers_
        self.trees = TreeEnsemble.from_sklearn(inner.estimator)
        (iso,) = inner.calibrators
        self.x = np.asarray(iso.X_thresholds_, float)
        self.y = np.asarray(iso.y_thresholds_, float)

    def proba(self, X: np.ndarray) -> np.ndarray:
        return np.interp(self.trees.predict_raw(X), self.x, self.y)
