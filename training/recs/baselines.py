"""The simple recommenders an analyst would use instead (popularity, buy-again) and the classic
collaborative ones (EASE, implicit's ALS): every list the learned recommender makes is compared
with theirs on the same window."""

from __future__ import annotations

import logging
from typing import Self

import numpy as np
import scipy.sparse as sp

from patron.training.recs.base import DenseRecommender, RecommenderBase
from patron.training.recs.history import History

log = logging.getLogger(__name__)


class PopularityRecommender(DenseRecommender):
    """The items with the most distinct buyers in the last ``days`` days, the same for everyone."""

    kind = "popularity"
    scores_items = False

    def __init__(self, days: float = 30.0):
        self.days = float(days)

    def get_params(self) -> dict:
        return {"days": self.days}

    def _popular_days(self) -> float:
        return self.days

    def fit_history(self, h: History) -> Self:
        self.history = h
        return self

    def _dense_scores(self, rows: np.ndarray) -> np.ndarray:
        return np.full((len(rows), self._check_fitted().n_items), -np.inf)  # everything comes from the fill

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _set_state(self, arrays, meta, directory) -> None:
        pass


class BuyAgainRecommender(DenseRecommender):
    """The customer's own items by number of orders that contained them, ties by recency."""

    kind = "buy_again"

    def __init__(self, popular_days: float = 30.0):
        self.popular_days = float(popular_days)

    def get_params(self) -> dict:
        return {"popular_days": self.popular_days}

    def _popular_days(self) -> float:
        return self.popular_days

    def fit_history(self, h: History) -> Self:
        self.history = h
        return self

    def _source_name(self) -> str:
        return "buy_again"

    def _dense_scores(self, rows: np.ndarray) -> np.ndarray:
        h = self._check_fitted()
        pos = h.pair_positions(rows)
        # count + a recency tie-breaker in (0, 0.5]
        val = h.n_inv[pos] + 0.5 * np.exp(-h.last_age[pos] / 365.0)
        m = h.rows_matrix(rows, val, np.float64).toarray()
        m[m == 0] = -np.inf
        return m

    def _reason(self, row: int, item: int, score: float) -> dict:
        h = self.history
        lo, hi = h.indptr[row], h.indptr[row + 1]
        p = lo + np.searchsorted(h.indices[lo:hi], item)
        n = int(h.n_inv[p])
        interval = float(h.first_age[p] - h.last_age[p]) / (n - 1) if n > 1 else None
        return {"times_bought": n, "days_since_last": round(float(h.last_age[p]), 1),
                "typical_interval_days": None if interval is None else round(interval, 1)}

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _set_state(self, arrays, meta, directory) -> None:
        pass


# EASE inverts a dense items x items matrix: 4,000 items are 128 MB per float64 copy and about 20 s
# of one core; quadratic memory and cubic time beyond. Past the cap, the most-bought items keep it.
EASE_MAX_ITEMS = 4_000


def ease_columns(h: History, min_buyers: int, max_items: int = EASE_MAX_ITEMS) -> np.ndarray:
    """The items EASE learns on: those with at least ``min_buyers`` buyers, at most ``max_items``
    of them (the most bought; ties by item order), in item order."""
    buyers = h.item_buyers(None)
    cols = np.flatnonzero(buyers >= min_buyers)
    if len(cols) > max_items:
        log.info("EASE on the %d most-bought of %d items (cap %d)", max_items, len(cols), max_items)
        cols = np.sort(cols[np.lexsort((cols, -buyers[cols]))[:max_items]])
    return cols


def ease_weights(X: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE (Steck 2019): B = I - P diagMat(1 / diag(P)), P = (X^T X + lambda I)^-1, diag(B) = 0."""
    if X.shape[1] == 0:
        return np.zeros((0, 0), np.float32)
    G = (X.T @ X).toarray().astype(np.float64)
    G[np.diag_indices_from(G)] += lam
    P = np.linalg.inv(G)
    B = -P / np.diag(P)[None, :]
    B[np.diag_indices_from(B)] = 0.0
    return B.astype(np.float32)


class EASERecommender(DenseRecommender):
    """EASE on the binary customer x item matrix, restricted to items with ``min_buyers`` buyers."""

    kind = "ease"

    def __init__(self, lam: float = 200.0, min_buyers: int = 3, popular_days: float = 30.0):
        self.lam = float(lam)
        self.min_buyers = int(min_buyers)
        self.popular_days = float(popular_days)
        self.cols: np.ndarray | None = None
        self.B: np.ndarray | None = None

    def get_params(self) -> dict:
        return {"lam": self.lam, "min_buyers": self.min_buyers, "popular_days": self.popular_days}

    def _popular_days(self) -> float:
        return self.popular_days

    def fit_history(self, h: History) -> Self:
        self.history = h
        X = h.matrix()
        self.cols = ease_columns(h, self.min_buyers)
        self.B = ease_weights(X[:, self.cols].tocsr(), self.lam)
        return self

    def _dense_scores(self, rows: np.ndarray) -> np.ndarray:
        h = self._check_fitted()
        Xr = h.rows_matrix(rows)[:, self.cols]
        out = np.full((len(rows), h.n_items), -np.inf)
        out[:, self.cols] = np.asarray(Xr @ self.B)
        return out

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"ease_cols": self.cols, "ease_B": self.B}

    def _set_state(self, arrays, meta, directory) -> None:
        self.cols, self.B = arrays["ease_cols"], arrays["ease_B"]


def als_confidence(h: History, alpha: float) -> sp.csr_matrix:
    """Confidence 1 + alpha * log1p(orders with the item): the usual implicit-feedback weighting."""
    return h.matrix(1.0 + alpha * np.log1p(h.n_inv), np.float32)


def fit_als(C: sp.csr_matrix, factors: int, regularization: float, iterations: int, seed: int,
            num_threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """implicit's CPU ALS on the (users x items) confidence matrix; returns (user, item) factors."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    # implicit's own threads do the work: BLAS threads on top of them only contend (and implicit
    # warns about it when the model is built, so it is built inside the limit too)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=1.0,
                                        iterations=iterations, random_state=seed, num_threads=num_threads)
        model.fit(C.tocsr(), show_progress=False)
    return np.asarray(model.user_factors, np.float32), np.asarray(model.item_factors, np.float32)


class ALSRecommender(DenseRecommender):
    """implicit's ALS (CPU) on a log-confidence customer x item matrix."""

    kind = "als"

    def __init__(self, factors: int = 64, regularization: float = 0.05, alpha: float = 10.0,
                 iterations: int = 15, seed: int = 0, popular_days: float = 30.0):
        self.factors = int(factors)
        self.regularization = float(regularization)
        self.alpha = float(alpha)
        self.iterations = int(iterations)
        self.seed = int(seed)
        self.popular_days = float(popular_days)
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None

    def get_params(self) -> dict:
        return {"factors": self.factors, "regularization": self.regularization, "alpha": self.alpha,
                "iterations": self.iterations, "seed": self.seed, "popular_days": self.popular_days}

    def _popular_days(self) -> float:
        return self.popular_days

    def fit_history(self, h: History, factors: tuple[np.ndarray, np.ndarray] | None = None) -> Self:
        """Fit on a history; ``factors``: (user, item) factors already fitted on it with this
        model's parameters (:meth:`same_fit`), used as they are."""
        self.history = h
        self.user_factors, self.item_factors = factors if factors is not None else fit_als(
            als_confidence(h, self.alpha), self.factors, self.regularization, self.iterations, self.seed)
        return self

    def same_fit(self, factors: int, regularization: float, alpha: float, iterations: int, seed: int) -> bool:
        """Whether ALS with these settings fits the same factors as this model."""
        return (self.factors, self.regularization, self.alpha, self.iterations, self.seed) == (
            factors, regularization, alpha, iterations, seed)

    def _dense_scores(self, rows: np.ndarray) -> np.ndarray:
        return (self.user_factors[rows] @ self.item_factors.T).astype(np.float64)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"als_user": self.user_factors, "als_item": self.item_factors}

    def _set_state(self, arrays, meta, directory) -> None:
        self.user_factors, self.item_factors = arrays["als_user"], arrays["als_item"]


BASELINES: dict[str, type[RecommenderBase]] = {
    "popularity": PopularityRecommender,
    "buy_again": BuyAgainRecommender,
    "ease": EASERecommender,
    "als": ALSRecommender,
}
