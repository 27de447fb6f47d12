"""Candidate sources and the ranker's features, as of one date (fitted on the lines before it).

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
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import scipy.sparse as sp

from patron.training.recs.baselines import als_confidence, ease_columns, ease_weights, fit_als
from patron.training.recs.history import History, coded_lines
from patron.training.recs.params import RecParams
from patron.training.recs.topn import (
    global_unseen_rank,
    pair_keys,
    rank_table,
    top_dense_both,
    top_entries,
    top_global,
    top_sparse_both,
)

SOURCES = ("buy_again", "co_purchase", "als", "ease", "trending", "popular")
BUY, COP, ALS, EASE, TREND, POP = range(6)

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


# the distinct (invoice, item) of a coded_lines session, invoices numbered in any order
BASKET_ITEMS_SQL = ("SELECT k, i FROM (SELECT DISTINCT invoice_no, i FROM cl)"
                    " JOIN (SELECT invoice_no, (row_number() OVER () - 1)::INTEGER AS k FROM (SELECT DISTINCT invoice_no FROM pl))"
                    " USING (invoice_no)")
# distinct buyers of each item (coded) with a purchase in [lo, hi) days before as_of
WINDOW_BUYERS_SQL = "SELECT i, count(DISTINCT c) AS n FROM cl WHERE age >= $lo AND age < $hi GROUP BY i"


COP_BLOCK_PAIRS = 10_000_000  # item pairs one block of the co-purchase counts may hold (about 30 bytes each at work)
COP_BLOCK_ROWS = 1024  # items per block at most (their neighbours are selected by one sort of 64-bit keys)


def basket_similarity(con, n_items: int, neighbours: int, shrink: float, block_pairs: int | None = None) -> sp.csr_matrix:
    """Item x item co-purchase similarity over the invoices of a :func:`coded_lines` session:
    cosine C_ij / sqrt(n_i n_j), shrunk by C_ij / (C_ij + shrink), keeping the ``neighbours`` most
    similar items per row (ties: the lower item first).

    The co-purchase counts C are computed for a block of items at a time, each block holding at
    most about ``block_pairs`` item pairs (bounded by the sizes of the block's invoices), and
    only each row's neighbours are kept: the whole item x item count matrix, which can approach
    items x items on a large catalogue, is never held."""
    b = con.execute(BASKET_ITEMS_SQL).fetchnumpy()
    inv_codes, ii = np.asarray(b["k"], np.int32), np.asarray(b["i"], np.int32)
    Bm = sp.csr_matrix((np.ones(len(ii), np.float32), (inv_codes, ii)), shape=(int(inv_codes.max()) + 1, n_items))
    del b, inv_codes, ii
    Bt = Bm.T.tocsr()  # items x invoices
    n = np.bincount(Bm.indices, weights=np.square(Bm.data, dtype=np.float64), minlength=n_items).astype(np.float32)
    # the pairs a row of C can hold at most: the sizes of the item's invoices, summed
    bound = np.cumsum(Bt @ np.diff(Bm.indptr).astype(np.float64))
    budget = COP_BLOCK_PAIRS if block_pairs is None else block_pairs
    rows, cols, vals = [], [], []
    lo = 0
    while lo < n_items:
        hi = max(int(np.searchsorted(bound, (bound[lo - 1] if lo else 0.0) + budget, side="right")), lo + 1)
        hi = min(hi, lo + COP_BLOCK_ROWS)
        C = (Bt[lo:hi] @ Bm).tocoo()
        r, c, d = C.row.astype(np.int64), C.col.astype(np.int64), C.data.astype(np.float32)
        del C
        off = (r + lo != c) & (d != 0)
        r, c, d = r[off], c[off], d[off]
        val = d / np.sqrt(n[r + lo] * n[c]) * (d / (d + shrink))
        r, c, val = top_entries(r, c, val, hi - lo, neighbours)
        rows.append(r + lo)
        cols.append(c)
        vals.append(val)
        lo = hi
    if not rows:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    out = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items, n_items),
                        dtype=np.float32)
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
    def build(cls, lines, as_of: dt.datetime, p: RecParams) -> "Sources":
        """Every source fitted on the product lines before ``as_of`` (a frame, a data folder or
        :class:`~patron.training.recs.lines.OrderLines`), read by DuckDB."""
        with coded_lines(lines, as_of) as con:
            h = History.from_coded(con, as_of)
            s = cls(h, p)
            s.S = basket_similarity(con, h.n_items, p.cop_neighbours, p.cop_shrink)

            def buyers(lo, hi):  # distinct buyers of each item in the window [lo, hi) days before as_of
                r = con.execute(WINDOW_BUYERS_SQL, {"lo": float(lo), "hi": float(hi)}).fetchnumpy()
                out = np.zeros(h.n_items, np.float32)
                out[r["i"]] = r["n"]
                return out

            s.trend_buyers = np.stack([buyers(0, p.trend_days), buyers(p.trend_days, 3 * p.trend_days)])
        s.U, s.V = fit_als(als_confidence(h, p.als_alpha), p.als_factors, p.als_regularization,
                           p.als_iterations, p.seed)
        X = h.matrix()
        s.ease_cols = ease_columns(h, p.ease_min_buyers)
        s.B = ease_weights(X[:, s.ease_cols].tocsr(), p.ease_lam)
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

    def ease_profile(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """EASE profile of the History pairs ``lo:hi`` (all by default): exp(-days since last
        purchase / ease_tau), as float32 (the values of :attr:`P`)."""
        return np.exp(-self.h.last_age[lo:hi] / self.p.ease_tau).astype(np.float32)

    def cop_weights(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Co-purchase anchor weights of the History pairs ``lo:hi`` (all by default): log(1 +
        orders) x exp(-days since last / cop_tau), as float32 (the values of :attr:`W`)."""
        h = self.h
        return (np.log1p(h.n_inv[lo:hi]) * np.exp(-h.last_age[lo:hi] / self.p.cop_tau)).astype(np.float32)

    @property
    def P(self) -> sp.csr_matrix:
        """EASE profile per bought item (:meth:`ease_profile`), customers x items."""
        if getattr(self, "_P", None) is None:
            self._P = self.h.matrix(self.ease_profile())
        return self._P

    @property
    def W(self) -> sp.csr_matrix:
        """Co-purchase anchor weights per bought item (:meth:`cop_weights`), customers x items."""
        if self._W is None:
            self._W = self.h.matrix(self.cop_weights())
        return self._W

    def pop_scores(self) -> np.ndarray:
        """Distinct buyers of each item in the last ``popular_days`` (computed once)."""
        if getattr(self, "_pop", None) is None:
            self._pop = self.h.item_buyers(self.p.popular_days)
        return self._pop

    def trend_scores(self) -> np.ndarray:
        recent, before = self.trend_buyers
        sc = np.log((recent + 1.0) / (before / 2.0 + 1.0)).astype(np.float64)
        sc[recent < 3] = -np.inf  # too few buyers to call it a trend
        return sc

    # ---- candidates and features for a block of customers
    @property
    def ease_pos(self) -> np.ndarray:
        """Each item's column in the EASE weights, -1 for items outside the capped set."""
        if getattr(self, "_ease_pos", None) is None:
            pos = np.full(self.h.n_items, -1, np.int64)
            pos[self.ease_cols] = np.arange(len(self.ease_cols))
            self._ease_pos = pos
        return self._ease_pos

    def global_orders(self) -> tuple[np.ndarray, np.ndarray]:
        """The popular and the trending order (the same for every customer; stable, ties by item)."""
        if getattr(self, "_orders", None) is None:
            pop = self.pop_scores()
            trend = self.trend_scores()
            finite = np.flatnonzero(np.isfinite(trend))
            self._orders = (np.argsort(-pop, kind="stable"), finite[np.argsort(-trend[finite], kind="stable")])
        return self._orders

    def warm(self) -> "Sources":
        """Compute the lazily built matrices once, before blocks are scored by several threads."""
        _ = (self.X, self.P, self.W, self.inv_key, self.ease_pos, self.global_orders())
        return self

    def candidates(self, rows: np.ndarray, new_only: bool) -> dict[str, np.ndarray]:
        """Candidate (row, item) pairs for the given customer rows, with features and source.

        Each source nominates its first unseen items and gives every candidate its rank, counted up
        to ``rank_cap`` (items further down rank ``rank_cap``), so a block costs a partition of
        each source's scores, not a sort of the catalogue (:mod:`patron.training.recs.topn`).
        Returns ``pair_row`` (position in ``rows``), ``item``, ``X`` (features, :data:`FEATURES`),
        ``source`` (index into :data:`SOURCES`) and ``prior`` (the order the sources alone give).
        """
        h, p = self.h, self.p
        rows = np.asarray(rows, np.int64)
        nb, n_i, cap = len(rows), h.n_items, p.rank_cap
        # the block's history pairs, in row then item order (positions into the History arrays)
        lens = np.diff(h.indptr)[rows]
        gpos = h.pair_positions(rows)
        s_rows = np.repeat(np.arange(nb, dtype=np.int64), lens)
        s_cols = h.indices[gpos].astype(np.int64)
        seen = (s_rows, s_cols)
        # each source's first items among all and among the unseen, from one selection. ALS scores
        # every item (dense over the block: rows x items, bounded by the block size); EASE only
        # its capped item set; co-purchase only the neighbours of what the customers bought
        als = self.U[rows] @ self.V.T
        als_sel, als_top = top_dense_both(als, cap, seen)
        ease_cols, ease_pos = self.ease_cols, self.ease_pos
        E = (self.P[rows][:, ease_cols] @ self.B) if len(ease_cols) else np.zeros((nb, 0), np.float32)
        E32 = np.asarray(E, np.float32)
        in_ease = ease_pos[s_cols] >= 0
        (er_, ec_, ek_), (tr_, tc_, tk_) = top_dense_both(E32, cap, (s_rows[in_ease], ease_pos[s_cols[in_ease]]))
        ease_sel, ease_top = (er_, ease_cols[ec_], ek_), (tr_, ease_cols[tc_], tk_)
        cop = (self.W[rows] @ self.S).tocsr()
        cop_sel, cop_top = top_sparse_both(cop, cap, seen)
        pop_order, trend_order = self.global_orders()
        # history candidates: the max_history items with the highest frequency x recency
        entries = []
        if not new_only and len(s_rows):
            last = (h.last_age[gpos] + 1e-3).astype(np.float32)
            hs = h.n_inv[gpos].astype(np.float32) * np.exp(-last / np.float32(180.0))
            order = np.lexsort((s_cols, -hs, s_rows))
            hr = np.empty(len(order), np.int64)
            hr[order] = np.arange(len(order)) - np.searchsorted(s_rows[order], s_rows[order])
            keep = hr < p.max_history
            entries.append((s_rows[keep], s_cols[keep], (hr[keep] + 1.0) / p.max_history - 1.0, BUY))
        nominations = ((COP, cop_top, p.n_cop), (ALS, als_top, p.n_als), (EASE, ease_top, p.n_ease),
                       (TREND, top_global(trend_order, n_i, seen, nb, p.n_trend), p.n_trend),
                       (POP, top_global(pop_order, n_i, seen, nb, p.n_pop), p.n_pop))
        for code, (r, c, u), n in nominations:
            m = u < n
            # personal sources before the ones that are the same for everyone
            entries.append((r[m], c[m], (u[m] + 1.0) / n + (1.0 if code in (TREND, POP) else 0.0), code))
        er = np.concatenate([e[0] for e in entries]) if entries else np.zeros(0, np.int64)
        ec = np.concatenate([e[1] for e in entries]) if entries else np.zeros(0, np.int64)
        ek = np.concatenate([e[2] for e in entries]) if entries else np.zeros(0)
        es = np.concatenate([np.full(len(e[0]), e[3], np.int8) for e in entries]) if entries else np.zeros(0, np.int8)
        # one row per pair: the best key, the earlier source on ties
        keys = pair_keys(er, ec, n_i)
        order = np.lexsort((es, ek, keys))
        first = np.ones(len(order), bool)
        first[1:] = keys[order][1:] != keys[order][:-1]
        best = order[first]
        # postage, fees and manual lines are bought, but never chosen: no list offers them
        best = best[h.item_nonproduct[ec[best]] == 0]
        pr, pi, prior, source = er[best], ec[best], ek[best], es[best]
        # pair features from the customer x item history, looked up among the block's own pairs
        # (sorted by block row, then item, as the History stores them)
        h_rows = rows[pr]
        block_keys = pair_keys(s_rows, s_cols, n_i)
        gk = pair_keys(pr, pi, n_i)
        at = np.minimum(np.searchsorted(block_keys, gk), max(len(block_keys) - 1, 0))
        b = block_keys[at] == gk if len(block_keys) else np.zeros(len(gk), bool)
        pp = np.where(b, gpos[at] if len(gpos) else 0, 0)

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
            q = cust.astype(np.float64) * 1e6 + fa[bi] + 1e-4
            since_first[bi] = np.searchsorted(self.inv_key, q, side="right") - h.inv_indptr[cust]
        e_at = ease_pos[pi]
        in_e = e_at >= 0
        als_v = als[pr, pi].astype(np.float64)
        ease_v = np.where(in_e, E32[pr, np.maximum(e_at, 0)] if E32.shape[1] else np.nan, np.nan).astype(np.float64)
        cop_v = cop.toarray()[pr, pi].astype(np.float64)
        shape = (nb, n_i)

        def rank(selected):
            return rank_table(shape, selected, cap)[pr, pi]

        with np.errstate(all="ignore"):
            als_max = als.max(axis=1).astype(np.float64) if n_i else np.zeros(nb)
            ease_max = E.max(axis=1).astype(np.float64) if E.shape[1] else np.full(nb, np.nan)
            cop_max = np.maximum(cop.max(axis=1).toarray().ravel(), 0).astype(np.float64) if n_i else np.zeros(nb)
            unseen = ~b
            trend_u = np.where(unseen, global_unseen_rank(trend_order, n_i, seen, pr, pi), np.nan)
            pop_u = np.where(unseen, global_unseen_rank(pop_order, n_i, seen, pr, pi), np.nan)
            pair = np.column_stack([
                b.astype(np.float64), n_ci, np.log1p(qty), fa, la, interval, la / interval,
                n_ci / c_orders, n_ci / since_first, la - c_last,
                als_v, rank(als_sel), np.where(unseen, rank(als_top), np.nan), als_v / als_max[pr],
                ease_v, np.where(in_e, rank(ease_sel), np.nan),
                np.where(in_e & unseen, rank(ease_top), np.nan), ease_v / ease_max[pr],
                cop_v, rank(cop_sel), np.where(unseen & (cop_v > 0), rank(cop_top), np.nan), cop_v / cop_max[pr],
                np.minimum(trend_u, cap), np.minimum(pop_u, cap),
            ])
        pair[~np.isfinite(pair)] = np.nan
        feats = np.hstack([pair, cf, self.item_feat[pi].astype(np.float64)])
        return {"pair_row": pr, "item": pi, "X": feats, "source": source, "prior": prior}

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
            if source == BUY:
                p = lo + int(np.searchsorted(mine, item))
                n = int(h.n_inv[p])
                interval = float(h.first_age[p] - h.last_age[p]) / (n - 1) if n > 1 else None
                out[q] = {"times_bought": n, "days_since_last": round(float(h.last_age[p]), 1),
                          "typical_interval_days": None if interval is None else round(interval, 1)}
            elif source == TREND:
                recent, before = self.trend_buyers[:, item]
                out[q] = {"buyers_recent": int(recent), "buyers_before": int(before), "days": self.p.trend_days}
            elif source == POP:
                pop = self.pop_scores() if pop is None else pop
                out[q] = {"buyers": int(pop[item]), "days": self.p.popular_days}
        for code in (COP, EASE, ALS):
            sel = np.flatnonzero(sources == code)
            if len(sel) == 0 or len(mine) == 0 or (code == EASE and len(self.ease_cols) == 0):
                continue
            tgt = items[sel]
            if code == COP:
                w = self.cop_weights(lo, hi).astype(np.float64)  # the row's alone: serving never builds W
                contrib = w[:, None] * self.S[mine][:, tgt].toarray()
            elif code == EASE:
                cols = self.ease_cols
                pos = np.minimum(np.searchsorted(cols, mine), len(cols) - 1)
                ok = cols[pos] == mine
                tpos = np.minimum(np.searchsorted(cols, tgt), len(cols) - 1)
                tok = cols[tpos] == tgt
                contrib = np.full((len(mine), len(tgt)), -np.inf)
                w = self.ease_profile(lo, hi).astype(np.float64)
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

