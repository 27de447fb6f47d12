"""The fitted trees of scikit-learn's HistGradientBoosting models, read as arrays, and its compiled
tree walker run over arrays saved by Patron.

What it relies on (scikit-learn 1.9.1, ``sklearn/ensemble/_hist_gradient_boosting/``): a fitted
model's ``_predictors`` (one list of ``TreePredictor`` per iteration, each with a ``nodes`` record
array of dtype ``PREDICTOR_RECORD_DTYPE``: value, feature_idx, num_threshold, missing_go_to_left,
left, right, is_leaf, is_categorical, ...) and ``_baseline_prediction``; and
``TreePredictor(nodes, binned_left_cat_bitsets, raw_left_cat_bitsets).predict(X, known_cat_bitsets,
f_idx_map, n_threads)``.

Why: the service scores on every request, and scikit-learn predicts one tree at a time through a
Python loop (milliseconds of overhead per call, even for one row); and models persist as data, not
pickles. Copying the trees into arrays (:class:`patron.training.trees.TreeEnsemble`) does both.

Upstream: the fitted trees were kept private when the estimators were added (review of
https://github.com/scikit-learn/scikit-learn/pull/12807: making them public "means users have
access to the TreePredictor class, which is supposed to be private"); the open
https://github.com/scikit-learn/scikit-learn/issues/29731 asks how to read ``_predictors[0][0].nodes``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from patron.compat import require

KNOWN_VERSIONS = ("1.9.1",)
VERSION = require("scikit-learn", KNOWN_VERSIONS, __name__)

from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE  # noqa: E402
from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor  # noqa: E402


def fitted_trees(model: Any) -> tuple[float, list[np.ndarray]]:
    """(baseline raw prediction, node record array of each tree) of a fitted binary classifier or
    single-output regressor."""
    return float(np.ravel(model._baseline_prediction)[0]), [it[0].nodes for it in model._predictors]


def compiled_walkers(trees: list[dict[str, np.ndarray]]) -> list[Any]:
    """A compiled walker per tree, from node arrays (numerical splits only); each has
    ``walk(X) -> leaf value per row``."""
    empty = np.zeros((0, 8), np.uint32)
    walkers = []
    for fields in trees:
        n = len(next(iter(fields.values())))
        rec = np.zeros(n, PREDICTOR_RECORD_DTYPE)
        for name, values in fields.items():
            rec[name] = values
        walkers.append(_Walker(TreePredictor(rec, empty, empty)))
    return walkers


class _Walker:
    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor

    def walk(self, X: np.ndarray) -> np.ndarray:
        n_features = X.shape[1]
        return self.predictor.predict(X, np.zeros((0, 8), np.uint32), np.zeros(n_features, np.uint32), 1)
