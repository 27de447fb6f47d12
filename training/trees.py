"""Gradient-boosted trees as data, and a fast evaluator for them.

scikit-learn's HistGradientBoosting models are fitted as usual, then their trees are copied into
plain arrays (:class:`TreeEnsemble`): saved without pickles, and evaluated by walking all trees
for all rows at once in numpy. scikit-learn predicts one tree at a time through a Python loop,
which for a few hundred trees costs milliseconds of overhead per call even for one row; the
service scores on every request, so that overhead matters more than the arithmetic.
"""

from __future__ import annotations

import numpy as np

from patron.compat.sklearn_trees import compiled_walkers, fitted_trees

WALK_ROWS = 2048  # rows walked through every tree at a time: 2048 x 31 features in float64 fit in L2


class TreeEnsemble:
    """A fitted binary HistGradientBoostingClassifier or a HistGradientBoostingRegressor as arrays.

    ``predict_raw(X)`` equals the model's raw prediction (the log-odds of a classifier, the log of
    a Poisson regressor's mean); numerical splits only.
    """

    FIELDS = ("value", "feature_idx", "num_threshold", "missing_go_to_left", "left", "right", "is_leaf")

    def __init__(self, baseline: float, offsets: np.ndarray, nodes: dict[str, np.ndarray], n_features: int):
        self.baseline = float(baseline)
        self.offsets = np.asarray(offsets, np.int64)
        self.nodes = {
            "value": np.asarray(nodes["value"], np.float64),
            "feature_idx": np.asarray(nodes["feature_idx"], np.int64),
            "num_threshold": np.asarray(nodes["num_threshold"], np.float64),
            "missing_go_to_left": np.asarray(nodes["missing_go_to_left"], bool),
            "left": np.asarray(nodes["left"], np.int64),
            "right": np.asarray(nodes["right"], np.int64),
            "is_leaf": np.asarray(nodes["is_leaf"], bool),
        }
        self.n_features = int(n_features)
        self._walkers: list | None = None

    @property
    def n_trees(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def constant(cls, n_features: int, p: float = 0.5) -> "TreeEnsemble":
        """No trees: every row gets ``p`` (a classifier that learned nothing)."""
        empty = {f: np.zeros(0, np.float64 if f in ("value", "num_threshold") else np.int64) for f in cls.FIELDS}
        p = min(max(p, 1e-6), 1 - 1e-6)
        return cls(float(np.log(p / (1 - p))), np.zeros(1, np.int64), empty, n_features)

    @classmethod
    def from_sklearn(cls, model) -> "TreeEnsemble":
        if getattr(model, "n_trees_per_iteration_", 1) != 1:
            raise ValueError("only binary classifiers and single-output regressors are supported")
        baseline, trees = fitted_trees(model)
        if any(t["is_categorical"].any() for t in trees):
            raise ValueError("categorical splits are not supported: encode categories as numbers")
        offsets = np.cumsum([0] + [len(t) for t in trees])
        nodes = {f: np.concatenate([t[f] for t in trees]) if trees else np.zeros(0) for f in cls.FIELDS}
        return cls(baseline, offsets, nodes, model.n_features_in_)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}{f}": v for f, v in self.nodes.items()}
        out[f"{prefix}offsets"] = self.offsets
        out[f"{prefix}header"] = np.array([self.baseline, self.n_features], np.float64)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> "TreeEnsemble":
        header = arrays[f"{prefix}header"]
        nodes = {f: arrays[f"{prefix}{f}"] for f in cls.FIELDS}
        return cls(header[0], arrays[f"{prefix}offsets"], nodes, int(header[1]))

    def _compiled(self) -> list:
        """scikit-learn's compiled walker of each tree, over these arrays (built once)."""
        if self._walkers is None:
            self._walkers = compiled_walkers(
                [{f: self.nodes[f][self.offsets[t]:self.offsets[t + 1]] for f in self.FIELDS} for t in range(self.n_trees)])
        return self._walkers

    def predict_raw(self, X: np.ndarray, block: int = 4096) -> np.ndarray:
        """Baseline plus the sum of every tree's leaf value.

        Few rows: all trees walked together, level by level, in numpy (no per-tree overhead).
        Many rows: scikit-learn's compiled walk, one call per tree over each slice of rows.
        """
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got shape {X.shape}")
        out = np.full(X.shape[0], self.baseline)
        if self.n_trees == 0 or X.shape[0] == 0:
            return out
        if X.shape[0] > 64:
            # every tree over a cache-sized slice of rows, then the next slice: tree after tree over
            # all rows reads the whole block from memory once per tree (twice as slow at 10^5 rows)
            walkers = self._compiled()
            for lo in range(0, X.shape[0], WALK_ROWS):
                x, o = X[lo:lo + WALK_ROWS], out[lo:lo + WALK_ROWS]
                for walker in walkers:
                    o += walker.walk(x)
            return out
        n = self.nodes
        starts = self.offsets[:-1]
        for lo in range(0, X.shape[0], block):
            x = X[lo:lo + block]
            rows = np.arange(x.shape[0])[:, None]
            node = np.broadcast_to(starts, (x.shape[0], self.n_trees)).copy()  # global node ids
            while True:
                leaf = n["is_leaf"][node]
                if leaf.all():
                    break
                v = x[rows, n["feature_idx"][node]]
                left = np.where(np.isnan(v), n["missing_go_to_left"][node], v <= n["num_threshold"][node])
                child = np.where(left, n["left"][node], n["right"][node]) + starts
                node = np.where(leaf, node, child)
            out[lo:lo + block] += n["value"][node].sum(axis=1)
        return out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Positive-class probability of a binary classifier."""
        return 1.0 / (1.0 + np.exp(-self.predict_raw(X)))
