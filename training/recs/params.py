"""The learned recommender's hyper-parameters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RecParams:
    """Hyper-parameters (chosen on the 2011-04-01 / 2011-05-01 / 2011-06-01 splits only)."""

    label_days: int = 92
    # candidates per source
    max_history: int = 200
    n_cop: int = 80
    n_als: int = 50
    n_ease: int = 100
    n_trend: int = 20
    n_pop: int = 30
    # a source's rank is counted up to this (items further down rank rank_cap): candidates cost a
    # partition of each source's scores, not a sort of the whole catalogue per customer
    rank_cap: int = 1000
    # sources
    popular_days: float = 30.0
    trend_days: float = 14.0
    cop_neighbours: int = 100
    cop_shrink: float = 2.0
    cop_tau: float = 90.0
    als_factors: int = 64
    als_regularization: float = 0.05
    als_alpha: float = 10.0
    als_iterations: int = 15
    ease_lam: float = 300.0
    ease_min_buyers: int = 3
    ease_tau: float = 90.0
    # extra training windows for the rankers, (days before as_of, label days), besides
    # (label_days, label_days); not used when a window alone brings rk_max_customers customers
    extra_windows: tuple = ((61, 61), (30, 30))
    # ranker: 50 boosting steps of 0.15 score as 150 of 0.05 did on the selection splits (within
    # 0.001 of recall@20 on average, docs/model-quality.md) and rank candidates three times faster
    rk_max_iter: int = 50
    rk_learning_rate: float = 0.15
    rk_max_leaf_nodes: int = 15
    rk_min_samples_leaf: int = 200
    rk_l2: float = 1.0
    # customers whose candidates train the rankers, per training window (sampled above it): each
    # brings a few hundred candidate rows, so rows and fitting time stay bounded at any shop size;
    # the shipped shop has fewer active customers per window than this
    rk_max_customers: int = 5_000
    seed: int = 0
