"""The recommender: candidates from several sources, then a learned ranker.

Sources (each also gives features to the ranker):

* ``buy_again``: the customer's own items, with frequency and recency awareness (orders with the
  item, the customer's typical re-purchase interval for it vs. the time since the last purchase);
* ``co_purchase``: items bought in the same baskets as the customer's items (shrunk cosine over
  invoices), weighted by how often and how recently the customer bought the anchor item;
* ``als``: implicit's ALS on a log-confidence customer x item matrix;
* ``ease``: EASE (Steck 2019) item-item weights learned on the binary customer x item matrix,
  applied to a time-decayed profile of the customer (recent purchases weigh more);
* ``popular`` (distinct buyers, last ``popular_days`` days) and ``trending`` (buyers in the last
  ``trend_days`` days vs. the four weeks before).

Ranker: two HistGradientBoosting classifiers (one for the list with repeats, one for the discovery
list of items new to the customer) trained on an earlier window: sources fitted on lines before
``T_train = as_of - label_days``, candidates labelled with the purchases in ``[T_train, as_of)``.
The sources are then fitted again on all lines before ``as_of`` and the rankers applied.

Persistence is data only (see :mod:`training.recs_baselines`): the boosted trees are stored as their
own node arrays and evaluated by :class:`TreeEnsemble`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from patron.times import to_utc
from patron.training.trees import TreeEnsemble
from patron.training.recs_baselines import (
    _REGISTRY,
    ARRAYS_FILE,
    BASELINES,
    DAY,
    History,
    NotFittedError,
    RecommenderBase,
    als_confidence,
    build_frame,
    ease_weights,
    empty_recs,
    fill_with_popular,
    fit_als,
    load_arrays,
    product_lines,
    read_meta,
    save_arrays,
    write_meta,
)

SOURCES = ("buy_again", "co_purchase", "als", "ease", "trending", "popular")
PRECOMPUTED = 50  # list length saved per customer with the model
SESSION_WEIGHT = 0.75  # of the session model in an anonymous basket's scores (chosen on May 2011)
SESSION_DIR = "session"
_BUY, _COP, _ALS, _EASE, _TREND, _POP = range(6)

CUSTOMER_FEATURES = ("c_orders", "c_last_age", "c_first_age", "c_items", "c_log_spend", "c_mean_gap",
                     "c_orders_30", "c_orders_90", "c_basket_size")
ITEM_FEATURES = ("i_buyers", "i_buyers_7", "i_buyers_30", "i_buyers_90", "i_trend", "i_first_age",
                 "i_last_age", "i_price", "i_nonproduct", "i_repeat_rate", "i_orders_per_buyer", "i_pop_rank")
PAIR_FEATURES = ("bought", "ci_orders", "ci_log_qty", "ci_first_age", "ci_last_age", "ci_interval", "ci_due",
                 "ci_share", "ci_share_since_first", "ci_last_gap",
                 "als", "als_rank", "als_urank", "als_norm",
                 "ease", "ease_rank", "ease_urank", "ease_norm",
                 "cop", "cop_rank", "cop_urank", "cop_norm", "trend_urank", "pop_urank")
FEATURES = PAIR_FEATURES + CUSTOMER_FEATURES + ITEM_FEATURES
# What each ranker sees. Item-level statistics (popularity, trend, price...) let a ranker trained on
# one window memorise which items sold in that window, which does not carry over to the next one
# (measured on the validation splits), so they stay out, except the item's age in the shop and, for
# the list with repeats, the share of the item's buyers who bought it more than once.
REPEAT_FEATURES = tuple(f for f in PAIR_FEATURES if f not in ("trend_urank", "pop_urank")) + ("i_first_age", "i_repeat_rate")
DISCOVERY_FEATURES = ("ease", "cop", "als", "ease_urank", "cop_urank", "als_urank", "i_first_age")
# The discovery ranker may only increase with each similarity score (and decrease with its rank):
# with few, noisy training windows that keeps it from contradicting the sources.
DISCOVERY_MONOTONE = (1, 1, 1, -1, -1, -1, 0)


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
    # (label_days, label_days)
    extra_windows: tuple = ((61, 61), (30, 30))
    # ranker
    rk_max_iter: int = 150
    rk_learning_rate: float = 0.05
    rk_max_leaf_nodes: int = 15
    rk_min_samples_leaf: int = 200
    rk_l2: float = 1.0
    seed: int = 0


# --------------------------------------------------------------------------------------------
# Candidate sources as of one date
# --------------------------------------------------------------------------------------------


def _rank_desc(scores: np.ndarray) -> np.ndarray:
    """0-based rank of each entry within its row, by decreasing score (ties: lower column first)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :].repeat(scores.shape[0], 0), axis=1)
    return ranks


def basket_similarity(lines: pd.DataFrame, items: np.ndarray, neighbours: int, shrink: float) -> sp.csr_matrix:
    """Item x item co-purchase similarity over invoices: cosine C_ij / sqrt(n_i n_j), shrunk by
    C_ij / (C_ij + shrink), keeping the ``neighbours`` most similar items per row."""
    n_items = len(items)
    inv_codes, _ = pd.factorize(lines["invoice_no"])
    ii = np.searchsorted(items, lines["item_id"].astype(str).to_numpy())
    Bm = sp.csr_matrix((np.ones(len(ii), np.float32), (inv_codes, ii)), shape=(inv_codes.max() + 1, n_items))
    Bm.data[:] = 1.0
    Bm.sum_duplicates()
    Bm.data[:] = 1.0
    C = (Bm.T @ Bm).tocsr().astype(np.float32)
    n = C.diagonal().astype(np.float32)
    C.setdiag(0)
    C.eliminate_zeros()
    C = C.tocoo()
    denom = np.sqrt(n[C.row] * n[C.col])
    val = C.data / denom * (C.data / (C.data + shrink))
    S = sp.csr_matrix((val.astype(np.float32), (C.row, C.col)), shape=(n_items, n_items))
    S.sort_indices()
    # keep the top neighbours of each row
    rows, cols, vals = [], [], []
    for r in range(n_items):
        lo, hi = S.indptr[r], S.indptr[r + 1]
        if hi == lo:
            continue
        v = S.data[lo:hi]
        c = S.indices[lo:hi]
        if hi - lo > neighbours:
            keep = np.lexsort((c, -v))[:neighbours]
            v, c = v[keep], c[keep]
        rows.append(np.full(len(c), r))
        cols.append(c)
        vals.append(v)
    if not rows:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    out = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items, n_items))
    out.sort_indices()
    return out


class Sources:
    """All candidate sources and features as of one date (fitted on the lines before it)."""

    def __init__(self, h: History, p: RecParams):
        self.h = h
        self.p = p
        self.S: sp.csr_matrix | None = None
        self.U: np.ndarray | None = None
        self.V: np.ndarray | None = None
        self.ease_cols: np.ndarray | None = None
        self.B: np.ndarray | None = None
        self.cust_feat: np.ndarray | None = None
        self.item_feat: np.ndarray | None = None
        self.trend_buyers: np.ndarray | None = None  # (recent, before) per item
        self._X = None
        self._W = None

    # ---- fitting
    @classmethod
    def build(cls, lines: pd.DataFrame, as_of: dt.datetime, p: RecParams) -> "Sources":
        t0 = pd.Timestamp(as_of)
        lines = product_lines(lines[lines["invoice_ts"] < t0])
        h = History.from_lines(lines, as_of)
        s = cls(h, p)
        s.S = basket_similarity(lines, h.items, p.cop_neighbours, p.cop_shrink)
        s.U, s.V = fit_als(als_confidence(h, p.als_alpha), p.als_factors, p.als_regularization,
                           p.als_iterations, p.seed)
        X = h.matrix()
        s.ease_cols = np.flatnonzero(h.item_buyers(None) >= p.ease_min_buyers)
        s.B = ease_weights(X[:, s.ease_cols].tocsr(), p.ease_lam)
        # trending: distinct buyers in the last trend_days vs. the 2 * trend_days before
        age = ((t0 - lines["invoice_ts"]).to_numpy() / DAY)
        ii = np.searchsorted(h.items, lines["item_id"].astype(str).to_numpy())
        cc = lines["customer_id"].to_numpy()

        def buyers(lo, hi):
            m = (age >= lo) & (age < hi)
            pairs = np.unique(np.stack([ii[m], cc[m]]), axis=1) if m.any() else np.zeros((2, 0), np.int64)
            return np.bincount(pairs[0].astype(np.int64), minlength=h.n_items).astype(np.float32)

        s.trend_buyers = np.stack([buyers(0, p.trend_days), buyers(p.trend_days, 3 * p.trend_days)])
        s.cust_feat = s._customer_features()
        s.item_feat = s._item_features()
        return s

    def _customer_features(self) -> np.ndarray:
        h = self.h
        n_c = h.n_customers
        orders = np.diff(h.inv_indptr).astype(np.float64)
        last_age = h.inv_age[h.inv_indptr[:-1]].astype(np.float64)  # ages ascending: first is the latest
        first_age = h.inv_age[h.inv_indptr[1:] - 1].astype(np.float64)
        items = np.diff(h.indptr).astype(np.float64)
        gap = np.where(orders > 1, (first_age - last_age) / np.maximum(orders - 1, 1), np.nan)
        cust_of_inv = np.repeat(np.arange(n_c), np.diff(h.inv_indptr))
        o30 = np.bincount(cust_of_inv[h.inv_age < 30], minlength=n_c)
        o90 = np.bincount(cust_of_inv[h.inv_age < 90], minlength=n_c)
        basket = np.bincount(cust_of_inv, weights=h.inv_size, minlength=n_c) / np.maximum(orders, 1)
        out = np.column_stack([orders, last_age, first_age, items, np.log1p(np.maximum(h.cust_spend, 0)), gap,
                               o30, o90, basket])
        assert out.shape[1] == len(CUSTOMER_FEATURES)
        return out.astype(np.float32)

    def _item_features(self) -> np.ndarray:
        h = self.h
        n_i = h.n_items
        buyers = h.item_buyers(None)
        first_age = np.full(n_i, np.nan)
        last_age = np.full(n_i, np.nan)
        np.fmax.at(first_age, h.indices, h.first_age.astype(np.float64))
        np.fmin.at(last_age, h.indices, h.last_age.astype(np.float64))
        repeat = np.bincount(h.indices, weights=(h.n_inv >= 2).astype(np.float64), minlength=n_i)
        orders = np.bincount(h.indices, weights=h.n_inv.astype(np.float64), minlength=n_i)
        recent, before = self.trend_buyers
        trend = np.log((recent + 1.0) / (before / 2.0 + 1.0))
        order, _ = h.popular_order(self.p.popular_days)
        pop_rank = np.full(n_i, float(n_i))  # service lines are never on the list: last
        pop_rank[order] = np.arange(len(order))
        out = np.column_stack([buyers, h.item_buyers(7), h.item_buyers(30), h.item_buyers(90), trend, first_age,
                               last_age, h.item_price, h.item_nonproduct, repeat / np.maximum(buyers, 1),
                               orders / np.maximum(buyers, 1), pop_rank])
        assert out.shape[1] == len(ITEM_FEATURES)
        return out.astype(np.float32)

    # ---- persistence
    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {k.replace("h_", prefix + "h_", 1): v for k, v in self.h.to_arrays().items()}
        S = self.S
        out.update({prefix + "S_indptr": S.indptr, prefix + "S_indices": S.indices, prefix + "S_data": S.data,
                    prefix + "U": self.U, prefix + "V": self.V, prefix + "ease_cols": self.ease_cols,
                    prefix + "B": self.B, prefix + "cust_feat": self.cust_feat, prefix + "item_feat": self.item_feat,
                    prefix + "trend_buyers": self.trend_buyers})
        return out

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], prefix: str, as_of: dt.datetime, p: RecParams) -> "Sources":
        h = History.from_arrays(a, as_of, prefix=prefix + "h_")
        s = cls(h, p)
        n = h.n_items
        s.S = sp.csr_matrix((a[prefix + "S_data"], a[prefix + "S_indices"], a[prefix + "S_indptr"]), shape=(n, n))
        for k in ("U", "V", "ease_cols", "B", "cust_feat", "item_feat", "trend_buyers"):
            setattr(s, k, a[prefix + k])
        return s

    # ---- helpers
    @property
    def X(self) -> sp.csr_matrix:
        if self._X is None:
            self._X = self.h.matrix(self.h.n_inv)
        return self._X

    @property
    def inv_key(self) -> np.ndarray:
        if getattr(self, "_inv_key", None) is None:
            h = self.h
            cust_of_inv = np.repeat(np.arange(h.n_customers), np.diff(h.inv_indptr))
            self._inv_key = cust_of_inv.astype(np.float64) * 1e6 + h.inv_age.astype(np.float32).astype(np.float64)
        return self._inv_key

    @property
    def P(self) -> sp.csr_matrix:
        """EASE profile: exp(-days since last purchase / ease_tau) per bought item."""
        if getattr(self, "_P", None) is None:
            self._P = self.h.matrix(np.exp(-self.h.last_age / self.p.ease_tau))
        return self._P

    @property
    def W(self) -> sp.csr_matrix:
        """Anchor weights for co-purchase: log(1 + orders) * exp(-days since last / tau)."""
        if self._W is None:
            h = self.h
            self._W = h.matrix(np.log1p(h.n_inv) * np.exp(-h.last_age / self.p.cop_tau))
        return self._W

    def pop_scores(self) -> np.ndarray:
        return self.h.item_buyers(self.p.popular_days)

    def trend_scores(self) -> np.ndarray:
        recent, before = self.trend_buyers
        sc = np.log((recent + 1.0) / (before / 2.0 + 1.0)).astype(np.float64)
        sc[recent < 3] = -np.inf  # too few buyers to call it a trend
        return sc

    # ---- candidates and features for a block of customers
    def candidates(self, rows: np.ndarray, new_only: bool) -> dict[str, np.ndarray]:
        """Candidate (row, item) pairs for the given customer rows, with features and source.

        Returns ``pair_row`` (position in ``rows``), ``item``, ``X`` (features, :data:`FEATURES`),
        ``source`` (index into :data:`SOURCES`).
        """
        h, p = self.h, self.p
        nb, n_i = len(rows), h.n_items
        Xr = self.X[rows]
        seen = Xr.toarray() > 0
        ninv = Xr.toarray()
        # dense source scores
        als = (self.U[rows] @ self.V.T).astype(np.float64)
        ease = np.full((nb, n_i), np.nan)
        ease[:, self.ease_cols] = (self.P[rows][:, self.ease_cols] @ self.B)
        cop = np.asarray((self.W[rows] @ self.S).todense(), dtype=np.float64)
        pop = np.broadcast_to(self.pop_scores(), (nb, n_i))
        trend = np.broadcast_to(self.trend_scores(), (nb, n_i))

        def ranks(sc, mask_seen):
            s = np.where(np.isnan(sc), -np.inf, sc)
            if mask_seen:
                s = np.where(seen, -np.inf, s)
            r = _rank_desc(s).astype(np.float64)
            r[~np.isfinite(s)] = np.inf
            return r

        als_r, ease_r, cop_r = ranks(als, False), ranks(ease, False), ranks(cop, False)
        als_u, ease_u, cop_u = ranks(als, True), ranks(ease, True), ranks(cop, True)
        cop_u[cop <= 0] = np.inf
        trend_u, pop_u = ranks(trend, True), ranks(pop, True)
        # history candidates: the max_history items with the highest frequency x recency
        hist = np.zeros((nb, n_i), bool)
        if not new_only:
            lastage = self.h.matrix(self.h.last_age + 1e-3)[rows].toarray()
            hs = np.where(seen, ninv * np.exp(-lastage / 180.0), -np.inf)
            hr = _rank_desc(hs)
            hist = seen & (hr < p.max_history)
            hist_key = (hr + 1.0) / p.max_history - 1.0  # before every other source
        depth = {_COP: (cop_u, p.n_cop), _ALS: (als_u, p.n_als), _EASE: (ease_u, p.n_ease),
                 _TREND: (trend_u, p.n_trend), _POP: (pop_u, p.n_pop)}
        cand = hist.copy()
        best_key = np.full((nb, n_i), np.inf)
        source = np.full((nb, n_i), -1, np.int8)
        source[hist] = _BUY
        if not new_only:
            best_key[hist] = hist_key[hist]
        for s_code in (_COP, _ALS, _EASE, _TREND, _POP):  # preference order on ties
            r, n = depth[s_code]
            nominated = (r < n) & ~seen
            key = (r + 1.0) / n + (1.0 if s_code in (_TREND, _POP) else 0.0)  # personal sources first
            better = nominated & (key < best_key)
            best_key[better] = key[better]
            source[better] = s_code
            cand |= nominated
        # postage, fees and manual lines are bought, but never chosen: no list offers them
        cand &= ~h.item_nonproduct.astype(bool)[None, :]
        pr, pi = np.nonzero(cand)
        # pair features from the customer x item history
        h_rows = rows[pr]
        sub = self.h.matrix(np.arange(1, len(self.h.indices) + 1, dtype=np.float64), np.float64)[rows].toarray()
        pos = sub[pr, pi].astype(np.int64) - 1  # -1: never bought
        b = pos >= 0
        pp = np.where(b, pos, 0)

        def hv(arr):
            return np.where(b, arr[pp].astype(np.float64), np.nan)

        n_ci, qty, fa, la = hv(h.n_inv), hv(h.qty), hv(h.first_age), hv(h.last_age)
        interval = np.where(n_ci > 1, (fa - la) / np.maximum(n_ci - 1, 1), np.nan)
        cf = self.cust_feat[h_rows].astype(np.float64)
        c_orders, c_last = cf[:, 0], cf[:, 1]
        # customer's orders since the first purchase of the item
        since_first = np.full(len(pr), np.nan)
        if b.any():
            bi = np.flatnonzero(b)
            cust = h_rows[bi]
            # invoice ages ascend within a customer and customers follow each other: one sorted key
            key = self.inv_key
            q = cust.astype(np.float64) * 1e6 + fa[bi] + 1e-4
            since_first[bi] = np.searchsorted(key, q, side="right") - h.inv_indptr[cust]
        als_v, ease_v, cop_v = als[pr, pi], ease[pr, pi], cop[pr, pi]
        def row_max(m):
            m = np.where(np.isfinite(m), m, -np.inf).max(axis=1) if m.shape[1] else np.zeros(len(m))
            return np.where(np.isfinite(m), m, np.nan)

        with np.errstate(all="ignore"):
            als_max, ease_max, cop_max = row_max(als), row_max(ease), row_max(cop)
            pair = np.column_stack([
                b.astype(np.float64), n_ci, np.log1p(qty), fa, la, interval, la / interval,
                n_ci / c_orders, n_ci / since_first, la - c_last,
                als_v, als_r[pr, pi], als_u[pr, pi], als_v / als_max[pr],
                ease_v, ease_r[pr, pi], ease_u[pr, pi], ease_v / ease_max[pr],
                cop_v, cop_r[pr, pi], cop_u[pr, pi], cop_v / cop_max[pr],
                trend_u[pr, pi], pop_u[pr, pi],
            ])
        pair[~np.isfinite(pair)] = np.nan
        feats = np.hstack([pair, cf, self.item_feat[pi].astype(np.float64)])
        # prior: the order the sources alone would give (ties of the ranker fall back to it)
        return {"pair_row": pr, "item": pi, "X": feats, "source": source[pr, pi], "prior": best_key[pr, pi]}

    # ---- reasons
    def reasons(self, row: int, items: np.ndarray, sources: np.ndarray) -> list[dict]:
        """Plain data for a human reason per recommended item of one customer (see :class:`Recommender`)."""
        h = self.h
        items = np.asarray(items, np.int64)
        sources = np.asarray(sources)
        out: list[dict] = [{} for _ in items]
        lo, hi = h.indptr[row], h.indptr[row + 1]
        mine = h.indices[lo:hi].astype(np.int64)
        pop = None
        for q, (item, source) in enumerate(zip(items, sources)):
            if source == _BUY:
                p = lo + int(np.searchsorted(mine, item))
                n = int(h.n_inv[p])
                interval = float(h.first_age[p] - h.last_age[p]) / (n - 1) if n > 1 else None
                out[q] = {"times_bought": n, "days_since_last": round(float(h.last_age[p]), 1),
                          "typical_interval_days": None if interval is None else round(interval, 1)}
            elif source == _TREND:
                recent, before = self.trend_buyers[:, item]
                out[q] = {"buyers_recent": int(recent), "buyers_before": int(before), "days": self.p.trend_days}
            elif source == _POP:
                pop = self.pop_scores() if pop is None else pop
                out[q] = {"buyers": int(pop[item]), "days": self.p.popular_days}
        for code in (_COP, _EASE, _ALS):
            sel = np.flatnonzero(sources == code)
            if len(sel) == 0 or len(mine) == 0 or (code == _EASE and len(self.ease_cols) == 0):
                continue
            tgt = items[sel]
            if code == _COP:
                w = self.W.data[lo:hi].astype(np.float64)
                contrib = w[:, None] * self.S[mine][:, tgt].toarray()
            elif code == _EASE:
                cols = self.ease_cols
                pos = np.minimum(np.searchsorted(cols, mine), len(cols) - 1)
                ok = cols[pos] == mine
                tpos = np.minimum(np.searchsorted(cols, tgt), len(cols) - 1)
                tok = cols[tpos] == tgt
                contrib = np.full((len(mine), len(tgt)), -np.inf)
                w = self.P.data[lo:hi].astype(np.float64)
                sub = self.B[np.ix_(pos[ok], tpos[tok])] * w[ok][:, None]
                contrib[np.ix_(np.flatnonzero(ok), np.flatnonzero(tok))] = sub
            else:
                V = self.V
                vt = V[tgt] / (np.linalg.norm(V[tgt], axis=1, keepdims=True) + 1e-9)
                vm = V[mine] / (np.linalg.norm(V[mine], axis=1, keepdims=True) + 1e-9)
                contrib = vm @ vt.T
            best = np.argmax(contrib, axis=0)
            for q, b in zip(sel, best):
                out[q] = {"anchor_item": str(h.items[mine[b]])}
        return out


# --------------------------------------------------------------------------------------------
# The recommender
# --------------------------------------------------------------------------------------------


def _labels(lines: pd.DataFrame, start: dt.datetime, end: dt.datetime, h: History) -> sp.csr_matrix:
    """customer x item (History indices) 0/1 matrix of purchases in [start, end)."""
    w = lines[(lines["invoice_ts"] >= pd.Timestamp(start)) & (lines["invoice_ts"] < pd.Timestamp(end))]
    rows = h.customer_index(w["customer_id"].to_numpy())
    cols = h.item_index(w["item_id"].astype(str).to_numpy())
    ok = (rows >= 0) & (cols >= 0)
    m = sp.csr_matrix((np.ones(ok.sum(), np.float32), (rows[ok], cols[ok])), shape=(h.n_customers, h.n_items))
    m.data[:] = 1.0
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


class Recommender(RecommenderBase):
    """Multi-source candidates + learned rankers. See the module docstring.

    ``recommend`` rows: ``customer_id, rank, item_id, score, source, reason_data`` where ``score`` is
    the ranker's purchase probability within the horizon, ``source`` one of :data:`SOURCES` and
    ``reason_data`` by source:

    * ``buy_again``: ``times_bought``, ``days_since_last``, ``typical_interval_days`` (None if once);
    * ``co_purchase`` / ``als`` / ``ease``: ``anchor_item``, the customer's own item that led to it;
    * ``trending``: ``buyers_recent``, ``buyers_before``, ``days``;
    * ``popular``: ``buyers``, ``days``.
    """

    kind = "recommender"

    def __init__(self, **params):
        known = {f.name for f in fields(RecParams)}
        unknown = set(params) - known
        if unknown:
            raise TypeError(f"unknown parameters: {sorted(unknown)}")
        if "extra_windows" in params:
            params["extra_windows"] = tuple(tuple(int(v) for v in w) for w in params["extra_windows"])
        self.params = RecParams(**params)
        self.sources: Sources | None = None
        self.rankers: dict[str, TreeEnsemble] = {}
        self.precomputed: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.session = None  # optional SessionModel for anonymous baskets (set_session)
        self.fit_info: dict = {}

    def get_params(self) -> dict:
        out = asdict(self.params)
        out["extra_windows"] = [list(w) for w in self.params.extra_windows]  # JSON-native
        return out

    def _popular_days(self) -> float:
        return self.params.popular_days

    @property
    def history(self) -> History | None:  # type: ignore[override]
        return None if self.sources is None else self.sources.h

    @history.setter
    def history(self, value) -> None:  # set through sources
        pass

    # ---- training
    def _training_set(self, lines: pd.DataFrame, t_train: dt.datetime, t_end: dt.datetime):
        """Candidates as of t_train (sources fitted on lines before it), labelled with the purchases
        in [t_train, t_end), for the customers who bought anything then."""
        src = Sources.build(lines, t_train, self.params)
        y_all = _labels(lines, t_train, t_end, src.h)
        active = np.flatnonzero(np.diff(y_all.indptr) > 0)
        Xs, ys, groups = [np.zeros((0, len(FEATURES)))], [np.zeros(0)], [np.zeros(0, np.int64)]
        for start in range(0, len(active), 256):
            rows = active[start:start + 256]
            c = src.candidates(rows, new_only=False)
            y = y_all[rows].toarray()[c["pair_row"], c["item"]]
            Xs.append(c["X"]); ys.append(y); groups.append(rows[c["pair_row"]])
        X = np.vstack(Xs).astype(np.float32)
        y = np.concatenate(ys).astype(np.int8)
        g = np.concatenate(groups)
        return X, y, g, src

    def _fit_ranker(self, X: np.ndarray, y: np.ndarray, g: np.ndarray, monotone=None) -> TreeEnsemble:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from threadpoolctl import threadpool_limits

        # only customers with at least one positive tell the ranker anything
        pos_groups = np.unique(g[y == 1])
        keep = np.isin(g, pos_groups)
        if len(pos_groups) == 0 or y[keep].min() == y[keep].max():  # nothing to learn from
            return TreeEnsemble.constant(X.shape[1], float(y.mean()) if len(y) else 0.5)
        p = self.params
        clf = HistGradientBoostingClassifier(
            max_iter=p.rk_max_iter, learning_rate=p.rk_learning_rate, max_leaf_nodes=p.rk_max_leaf_nodes,
            min_samples_leaf=p.rk_min_samples_leaf, l2_regularization=p.rk_l2, early_stopping=False,
            monotonic_cst=None if monotone is None else list(monotone), random_state=p.seed)
        Xk = X[keep]
        all_nan = np.isnan(Xk).all(axis=0)
        if all_nan.any():  # (e.g. history features for never-bought items) constant, never split on
            Xk = Xk.copy()
            Xk[:, all_nan] = 0.0
        # one OpenMP thread: on a busy 2-core machine more threads spin and run many times slower
        with threadpool_limits(1, "openmp"):
            clf.fit(Xk, y[keep])
        return TreeEnsemble.from_sklearn(clf)

    def fit(self, lines: pd.DataFrame, as_of) -> Self:
        as_of = to_utc(as_of)
        p = self.params
        t_start = time.perf_counter()
        lines = product_lines(lines[lines["invoice_ts"] < pd.Timestamp(as_of)])
        if lines.empty:
            raise ValueError(f"no order lines with a product before {as_of:%Y-%m-%d}")
        t_train = as_of - dt.timedelta(days=p.label_days)
        windows = list(dict.fromkeys([(p.label_days, p.label_days)] + [tuple(w) for w in p.extra_windows]))
        parts = []
        for j, (off, span) in enumerate(windows):
            t0 = as_of - dt.timedelta(days=off)
            if not (lines["invoice_ts"] < pd.Timestamp(t0)).any():
                continue
            X, y, g, _ = self._training_set(lines, t0, min(t0 + dt.timedelta(days=span), as_of))
            if len(y):
                parts.append((X, y, g + j * (1 << 40)))
        if parts:
            X = np.vstack([q[0] for q in parts])
            y = np.concatenate([q[1] for q in parts])
            g = np.concatenate([q[2] for q in parts])
        else:  # history too short for any training window: the sources' own order is used
            X, y, g = np.zeros((0, len(FEATURES)), np.float32), np.zeros(0, np.int8), np.zeros(0, np.int64)
        t_cand = time.perf_counter()
        rep_cols = [FEATURES.index(f) for f in REPEAT_FEATURES]
        disc_cols = [FEATURES.index(f) for f in DISCOVERY_FEATURES]
        self.rankers = {"repeat": self._fit_ranker(X[:, rep_cols], y, g)}
        new = X[:, FEATURES.index("bought")] == 0
        self.rankers["discovery"] = self._fit_ranker(X[new][:, disc_cols], y[new], g[new], DISCOVERY_MONOTONE)
        t_rank = time.perf_counter()
        self.sources = Sources.build(lines, as_of, p)
        t_end = time.perf_counter()
        self.fit_info = {
            "train_as_of": t_train.isoformat(), "train_rows": int(len(y)), "train_positives": int(y.sum()),
            "train_customers": int(len(np.unique(g))), "train_windows": len(parts),
            "rankers_trained": {k: len(r.offsets) > 1 for k, r in self.rankers.items()},
            "seconds_training_set": round(t_cand - t_start, 2), "seconds_rankers": round(t_rank - t_cand, 2),
            "seconds_sources": round(t_end - t_rank, 2),
        }
        return self

    # ---- serving
    def _check_model(self) -> Sources:
        if self.sources is None or not self.rankers:
            raise NotFittedError("Recommender is not fitted: call fit() or load()")
        return self.sources

    def _rank(self, rows: np.ndarray, k: int, new_only: bool, block: int = 256) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Ranked candidates of known customer rows: row -> (item indices, scores, source codes), at most k."""
        src = self._check_model()
        ranker = self.rankers["discovery" if new_only else "repeat"]
        cols = [FEATURES.index(f) for f in (DISCOVERY_FEATURES if new_only else REPEAT_FEATURES)]
        out: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        uniq_rows = np.unique(rows[rows >= 0])
        for start in range(0, len(uniq_rows), block):
            r = uniq_rows[start:start + block]
            c = src.candidates(r, new_only)
            score = ranker.predict_proba(c["X"][:, cols]) if len(c["item"]) else np.zeros(0)
            order = np.lexsort((c["item"], c["prior"], -np.round(score, 12), c["pair_row"]))
            bounds = np.searchsorted(c["pair_row"][order], np.arange(len(r) + 1))
            for j, row in enumerate(r):
                sel = order[bounds[j]:bounds[j + 1]][:k]
                out[int(row)] = (c["item"][sel].astype(np.int64), score[sel], c["source"][sel].astype(np.int64))
        return out

    def precompute(self, k: int = PRECOMPUTED, block: int = 256) -> None:
        """Rank both lists of every known customer once, to be saved with the model: serving and the
        batch export then read them instead of scoring candidates per request. Short lists are
        topped up with popular items, as :meth:`recommend` does."""
        src = self._check_model()
        h = src.h
        rows = np.arange(h.n_customers)
        pop_order, pop_score = self.popular_products()
        X = h.matrix()
        self.precomputed = {}
        for name, new_only in (("repeat", False), ("discovery", True)):
            ranked = self._rank(rows, k, new_only, block)
            items = np.full((h.n_customers, k), -1, np.int32)
            scores = np.zeros((h.n_customers, k), np.float32)
            codes = np.full((h.n_customers, k), -1, np.int8)
            for row in rows:
                il, sl, cl = (list(x) for x in ranked.get(int(row), ([], [], [])))
                so = [SOURCES[c] for c in cl]
                if len(il) < k:
                    seen = set(X.indices[X.indptr[row]:X.indptr[row + 1]].tolist()) if new_only else set()
                    fill_with_popular(il, sl, so, [{} for _ in il], pop_order, pop_score, k, seen, self.params.popular_days)
                items[row, :len(il)] = il
                scores[row, :len(sl)] = sl
                codes[row, :len(so)] = [SOURCES.index(x) for x in so]
            self.precomputed[name] = (items, scores, codes)

    def popular_products(self, days: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The popular list over ``days`` (default ``popular_days``): :meth:`History.popular_order`."""
        return self._check_model().h.popular_order(self.params.popular_days if days is None else days)

    def ranked(self, row: int, new_only: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The precomputed list of a known customer row (item indices, scores, source codes), or None."""
        pre = self.precomputed.get("discovery" if new_only else "repeat")
        if pre is None or row < 0:
            return None
        items, scores, codes = pre
        n = int((items[row] >= 0).sum())
        return items[row, :n], scores[row, :n], codes[row, :n]

    def recommend(self, customer_ids: Iterable, k: int = 20, new_only: bool = False, block: int = 256) -> pd.DataFrame:
        """Top-k per customer. ``new_only``: the discovery list (items the customer never bought)."""
        src = self._check_model()
        h = src.h
        ids = np.asarray(list(customer_ids) if not isinstance(customer_ids, np.ndarray) else customer_ids, np.int64)
        if len(ids) == 0 or k <= 0:
            return empty_recs()
        rows = h.customer_index(ids)
        pre = self.precomputed.get("discovery" if new_only else "repeat")
        if pre is not None and k <= pre[0].shape[1]:
            ranked = {int(r): self.ranked(int(r), new_only) for r in np.unique(rows[rows >= 0])}
            ranked = {r: (i[:k], s[:k], c[:k]) for r, (i, s, c) in ranked.items()}
        else:
            ranked = self._rank(rows, k, new_only, block)
        pop_order, pop_score = self.popular_products()
        out_items, out_scores, out_src, out_rsn = [], [], [], []
        X = h.matrix()
        for row in rows:
            il, sl, cl = ranked.get(int(row), (np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)))
            rs = src.reasons(int(row), il, cl) if row >= 0 else []
            il, sl, so = [int(i) for i in il], [float(x) for x in sl], [SOURCES[c] for c in cl]
            if len(il) < k:  # cold start, or too few candidates: popular items
                seen = set(X.indices[X.indptr[row]:X.indptr[row + 1]].tolist()) if row >= 0 and new_only else set()
                fill_with_popular(il, sl, so, rs, pop_order, pop_score, k, seen, self.params.popular_days)
            out_items.append(il); out_scores.append(sl); out_src.append(so); out_rsn.append(rs)
        return build_frame(ids, out_items, out_scores, out_src, out_rsn, h.items)

    def discovery(self, customer_ids: Iterable, k: int = 20) -> pd.DataFrame:
        """Only items the customer never bought before ``as_of``."""
        return self.recommend(customer_ids, k=k, new_only=True)

    def similar_items(self, item_id: str, k: int = 10) -> pd.DataFrame:
        """Items most bought in the same baskets (shrunk cosine); ALS item-factor cosine completes
        the list for items with few co-purchases. Unknown item: the popular items.

        Columns ``rank, item_id, score, source ('co_purchase' | 'als' | 'popular'), reason_data``."""
        src = self._check_model()
        h = src.h
        i = int(h.item_index([item_id])[0])
        if i < 0:
            return self.popular(k)
        lo, hi = src.S.indptr[i], src.S.indptr[i + 1]
        cols, vals = src.S.indices[lo:hi], src.S.data[lo:hi]
        product = h.item_nonproduct[cols] == 0
        cols, vals = cols[product], vals[product]
        order = np.lexsort((cols, -vals))[:k]
        out = [(int(cols[o]), float(vals[o]), "co_purchase") for o in order]
        if len(out) < k:
            V = src.V
            vn = V / (np.linalg.norm(V, axis=1, keepdims=True) + 1e-9)
            sim = vn @ vn[i]
            sim[i] = -np.inf
            sim[h.item_nonproduct == 1] = -np.inf
            have = {o[0] for o in out}
            for j in np.lexsort((np.arange(len(sim)), -sim)):
                if len(out) >= k:
                    break
                if int(j) not in have:
                    out.append((int(j), float(sim[j]), "als"))
        return pd.DataFrame({"rank": np.arange(1, len(out) + 1, dtype=np.int64),
                             "item_id": [str(h.items[j]) for j, _, _ in out],
                             "score": [s for _, s, _ in out], "source": [s for _, _, s in out],
                             "reason_data": [{"anchor_item": str(item_id)} for _ in out]})

    def for_session(self, items: list[str], k: int = 10) -> pd.DataFrame:
        """For an anonymous basket: the items most likely to be added to it, then popular ones.

        With a session model (trained on every basket, guests' included; :mod:`training.session`)
        the score is ``SESSION_WEIGHT`` x its probabilities + the rest x co-purchase similarity,
        each scaled to its maximum for the basket: the blend beat both parts on the validation
        month (benchmarks/session_quality.py). Without one, co-purchase alone.
        Columns ``rank, item_id, score, source, reason_data``."""
        src = self._check_model()
        h = src.h
        idx = h.item_index(items)
        idx = np.unique(idx[idx >= 0])
        out: list[tuple[int, float, str, dict]] = []
        if len(idx):
            block = src.S[idx]
            cop = np.asarray(block.sum(axis=0)).ravel().astype(np.float64)
            score = cop / cop.max() if cop.max() > 0 else cop
            probs = self.session.scores([str(h.items[i]) for i in idx]) if self.session is not None else None
            if probs is not None:
                sess = np.zeros(h.n_items)
                known = self._session_index >= 0
                sess[known] = probs[self._session_index[known]]
                score = SESSION_WEIGHT * sess / max(sess.max(), 1e-12) + (1 - SESSION_WEIGHT) * score
            score[idx] = 0.0
            score[h.item_nonproduct == 1] = 0.0
            cand = np.flatnonzero(score > 0)
            cand = cand[np.lexsort((cand, -score[cand]))][:k]
            dense = block[:, cand].toarray() if len(cand) else np.zeros((len(idx), 0))
            for q, j in enumerate(cand):
                # the basket item it is most bought with names the reason (the first one if none)
                anchor = idx[int(np.argmax(dense[:, q]))]
                out.append((int(j), float(score[j]), "co_purchase", {"anchor_item": str(h.items[anchor])}))
        if len(out) < k:
            order, pop = self.popular_products()
            have = {o[0] for o in out} | set(idx.tolist())
            for j in order:
                if len(out) >= k:
                    break
                if int(j) not in have:
                    out.append((int(j), float(pop[j]), "popular", {"buyers": int(pop[j]), "days": self.params.popular_days}))
        return pd.DataFrame({"rank": np.arange(1, len(out) + 1, dtype=np.int64),
                             "item_id": [str(h.items[j]) for j, _, _, _ in out],
                             "score": [o[1] for o in out], "source": [o[2] for o in out],
                             "reason_data": [o[3] for o in out]})

    def set_session(self, session) -> None:
        """Attach a fitted :class:`training.session.SessionModel` for anonymous baskets."""
        self.session = session
        h = self._check_model().h
        pos = {str(i): j for j, i in enumerate(session.item_ids)}
        self._session_index = np.array([pos.get(str(i), -1) for i in h.items], np.int64)

    # ---- persistence
    def _state_arrays(self) -> dict[str, np.ndarray]:
        out = self.sources.to_arrays("s_")
        for name, r in self.rankers.items():
            out.update(r.to_arrays(f"rk_{name}_"))
        for name, (items, scores, codes) in self.precomputed.items():
            out.update({f"pre_{name}_items": items, f"pre_{name}_scores": scores, f"pre_{name}_sources": codes})
        return out

    def _extra_meta(self) -> dict:
        return {"features": list(FEATURES), "repeat_features": list(REPEAT_FEATURES),
                "discovery_features": list(DISCOVERY_FEATURES), "sources": list(SOURCES), "rankers": sorted(self.rankers),
                "fit_info": self.fit_info}

    def save(self, directory: Path) -> Path:
        src = self._check_model()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_arrays(directory / ARRAYS_FILE, self._state_arrays())
        if self.session is not None:
            self.session.save(directory / SESSION_DIR)
        write_meta(directory, self.kind, self.get_params(), as_of=src.h.as_of.isoformat(),
                   n_customers=src.h.n_customers, n_items=src.h.n_items, **self._extra_meta())
        return directory

    @classmethod
    def load(cls, directory: Path) -> "Recommender":
        directory = Path(directory)
        meta = read_meta(directory, cls.kind)
        if (list(meta.get("features", [])) != list(FEATURES) or meta.get("repeat_features") != list(REPEAT_FEATURES)
                or meta.get("discovery_features") != list(DISCOVERY_FEATURES)):
            raise ValueError(f"{directory}: the saved feature list differs from this code's; retrain the model")
        arrays = load_arrays(directory / ARRAYS_FILE)
        model = cls(**meta["params"])
        as_of = dt.datetime.fromisoformat(meta["as_of"])
        model.sources = Sources.from_arrays(arrays, "s_", as_of, model.params)
        model.rankers = {name: TreeEnsemble.from_arrays(arrays, f"rk_{name}_") for name in meta["rankers"]}
        model.precomputed = {name: (arrays[f"pre_{name}_items"], arrays[f"pre_{name}_scores"], arrays[f"pre_{name}_sources"])
                             for name in ("repeat", "discovery") if f"pre_{name}_items" in arrays}
        model.fit_info = meta.get("fit_info", {})
        if (directory / SESSION_DIR).is_dir():
            from patron.training.session import SessionModel

            model.set_session(SessionModel.load(directory / SESSION_DIR))
        return model

    def _set_state(self, arrays, meta, directory) -> None:  # pragma: no cover - load() is overridden
        raise NotImplementedError


def load_model(directory: Path) -> RecommenderBase:
    """Load any saved recommender (baseline or :class:`Recommender`) by the kind in its meta.json."""
    meta = read_meta(Path(directory))
    cls = _REGISTRY.get(meta["kind"])
    if cls is None:
        raise ValueError(f"unknown recommender kind {meta['kind']!r} in {directory}")
    return cls.load(directory)


__all__ = ["BASELINES", "FEATURES", "SOURCES", "RecParams", "Recommender", "TreeEnsemble", "load_model"]
