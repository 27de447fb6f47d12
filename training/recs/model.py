"""The learned recommender: candidates from several sources (:mod:`sources`), then a learned ranker.

Ranker: two HistGradientBoosting classifiers (one for the list with repeats, one for the discovery
list of items new to the customer) trained on an earlier window: sources fitted on lines before
``T_train = as_of - label_days``, candidates labelled with the purchases in ``[T_train, as_of)``.
The sources are then fitted again on all lines before ``as_of`` and the rankers applied.

Persistence is data only (see :mod:`base`): the boosted trees are stored as their own node arrays
and evaluated by :class:`~patron.training.trees.TreeEnsemble`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from patron.times import to_utc
from patron.training.recs.base import (
    NotFittedError,
    RecommenderBase,
    build_frame,
    empty_recs,
    fill_with_popular,
    load_arrays,
    read_meta,
    save_arrays,
    write_meta,
)
from patron.training.recs.history import History, as_ids
from patron.training.recs.lines import OrderLines
from patron.training.recs.params import RecParams
from patron.training.recs.sources import FEATURES, PAIR_FEATURES, SOURCES, Sources
from patron.training.recs.topn import block_rows, map_blocks
from patron.training.trees import TreeEnsemble

log = logging.getLogger(__name__)

PRECOMPUTED = 50  # list length saved per customer with the model
SESSION_WEIGHT = 0.75  # of the session model in an anonymous basket's scores (chosen on May 2011)
SESSION_DIR = "session"
# What each ranker sees. Item-level statistics (popularity, trend, price...) let a ranker trained on
# one window memorise which items sold in that window, which does not carry over to the next one
# (measured on the validation splits), so they stay out, except the item's age in the shop and, for
# the list with repeats, the share of the item's buyers who bought it more than once.
REPEAT_FEATURES = tuple(f for f in PAIR_FEATURES if f not in ("trend_urank", "pop_urank")) + ("i_first_age", "i_repeat_rate")
DISCOVERY_FEATURES = ("ease", "cop", "als", "ease_urank", "cop_urank", "als_urank", "i_first_age")
# The discovery ranker may only increase with each similarity score (and decrease with its rank):
# with few, noisy training windows that keeps it from contradicting the sources.
DISCOVERY_MONOTONE = (1, 1, 1, -1, -1, -1, 0)


def _labels(lines: OrderLines, start: dt.datetime, end: dt.datetime, h: History) -> sp.csr_matrix:
    """customer x item (History indices) 0/1 matrix of purchases in [start, end)."""
    customers, items = lines.pairs_between(start, end)
    rows = h.customer_index(customers)
    cols = h.item_index(items)
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
    def _training_set(self, lines: OrderLines, t_train: dt.datetime, t_end: dt.datetime, src: Sources | None = None):
        """Candidates as of t_train (sources fitted on lines before it, unless given), labelled with
        the purchases in [t_train, t_end), for the customers who bought anything then."""
        t0 = time.perf_counter()
        src = src if src is not None else Sources.build(lines, t_train, self.params)
        log.info("sources as of %s: %d customers x %d items, fitted in %.0f s", f"{t_train:%Y-%m-%d}",
                 src.h.n_customers, src.h.n_items, time.perf_counter() - t0)
        y_all = _labels(lines, t_train, t_end, src.h)
        active = np.flatnonzero(np.diff(y_all.indptr) > 0)
        if len(active) > self.params.rk_max_customers:  # whole customers, the same ones on every run
            rng = np.random.default_rng([self.params.seed, int(t_train.timestamp())])
            active = np.sort(rng.choice(active, self.params.rk_max_customers, replace=False))
        Xs, ys, groups = [np.zeros((0, len(FEATURES)))], [np.zeros(0)], [np.zeros(0, np.int64)]

        def labelled(rows):
            c = src.candidates(rows, new_only=False)
            return c["X"].astype(np.float32), y_all[rows].toarray()[c["pair_row"], c["item"]], rows[c["pair_row"]]

        src.warm()
        for x, y, g in map_blocks(labelled, active, block_rows(src.h.n_items)):
            Xs.append(x); ys.append(y); groups.append(g)
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

    def fit(self, lines, as_of, fitted: "Recommender | None" = None) -> Self:
        """Fit on the lines before ``as_of`` (a frame, a data folder or
        :class:`~patron.training.recs.lines.OrderLines`: read by DuckDB). ``fitted``: a recommender with the same parameters
        fitted on the same lines before an earlier date; where that date is one of this fit's
        training windows, its sources are reused instead of fitted again."""
        as_of = to_utc(as_of)
        p = self.params
        t_start = time.perf_counter()
        lines = OrderLines(lines).before(as_of)
        if not lines.has_products():
            raise ValueError(f"no order lines with a product before {as_of:%Y-%m-%d}")
        t_train = as_of - dt.timedelta(days=p.label_days)
        windows = list(dict.fromkeys([(p.label_days, p.label_days)] + [tuple(w) for w in p.extra_windows]))
        parts, reused = [], 0
        for j, (off, span) in enumerate(windows):
            t0 = as_of - dt.timedelta(days=off)
            if not lines.has_products_before(t0):
                continue
            reuse = (fitted.sources if fitted is not None and fitted.sources is not None and fitted.params == p
                     and fitted.sources.h.as_of == t0 else None)
            reused += reuse is not None
            X, y, g, _ = self._training_set(lines, t0, min(t0 + dt.timedelta(days=span), as_of), reuse)
            if len(y):
                parts.append((X, y, g + j * (1 << 40)))
            if len(np.unique(g)) >= p.rk_max_customers:
                # the window alone brings as many customers as the rankers learn from: the extra,
                # shorter windows (for shops with few buyers per window) would only add fitting time
                break
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
            "train_customers": int(len(np.unique(g))), "train_windows": len(parts), "windows_reused": reused,
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

    def _ranked_blocks(self, rows: np.ndarray, k: int, lists: tuple[str, ...], block: int | None = None):
        """Yield, block by block of the distinct known rows, ``(rows, {list: [(item indices, scores,
        source codes) of each row, at most k]})`` for the lists named (``repeat``, ``discovery``).
        One candidate pass serves both: the discovery list ranks the candidates never bought."""
        src = self._check_model()
        spec = {name: (self.rankers[name], [FEATURES.index(f) for f in (DISCOVERY_FEATURES if name == "discovery" else REPEAT_FEATURES)])
                for name in lists}
        bought = FEATURES.index("bought")

        def ranked(r):
            c = src.candidates(r, new_only=lists == ("discovery",))
            out = {}
            for name, (ranker, cols) in spec.items():
                keep = np.flatnonzero(c["X"][:, bought] == 0) if name == "discovery" else np.arange(len(c["item"]))
                score = ranker.predict_proba(c["X"][np.ix_(keep, cols)]) if len(keep) else np.zeros(0)
                item, prior, pair_row, source = (c[key][keep] for key in ("item", "prior", "pair_row", "source"))
                order = np.lexsort((item, prior, -np.round(score, 12), pair_row))
                bounds = np.searchsorted(pair_row[order], np.arange(len(r) + 1))
                out[name] = [(item[sel].astype(np.int64), score[sel], source[sel].astype(np.int64))
                             for sel in (order[bounds[j]:bounds[j + 1]][:k] for j in range(len(r)))]
            return r, out

        uniq_rows = np.unique(rows[rows >= 0])
        src.warm()
        step, done = max(len(uniq_rows) // 10, 50_000), 0
        for r, out in map_blocks(ranked, uniq_rows, block or block_rows(src.h.n_items)):
            yield r, out
            if (done + len(r)) // step > done // step:
                log.info("%s lists: %d of %d customers ranked", " and ".join(lists), done + len(r), len(uniq_rows))
            done += len(r)

    def _rank(self, rows: np.ndarray, k: int, new_only: bool, block: int | None = None) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Ranked candidates of known customer rows: row -> (item indices, scores, source codes), at most k."""
        name = "discovery" if new_only else "repeat"
        out: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for r, lists in self._ranked_blocks(rows, k, (name,), block):
            out.update(zip(r.tolist(), lists[name]))
        return out

    def precompute(self, k: int = PRECOMPUTED, block: int | None = None) -> None:
        """Rank both lists of every known customer once, to be saved with the model: serving and the
        batch export then read them instead of scoring candidates per request. Short lists are
        topped up with popular items, as :meth:`recommend` does. Written block by block into the
        arrays: nothing per customer is held beyond them."""
        src = self._check_model()
        h = src.h
        pop_order, pop_score = self.popular_products()
        X = h.matrix()
        n = h.n_customers
        out = {name: (np.full((n, k), -1, np.int32), np.zeros((n, k), np.float32), np.full((n, k), -1, np.int8))
               for name in ("repeat", "discovery")}
        for r, lists in self._ranked_blocks(np.arange(n), k, ("repeat", "discovery"), block):
            for name, (items, scores, codes) in out.items():
                for row, (il, sl, cl) in zip(r.tolist(), lists[name]):
                    if len(il) < k:
                        il, sl, so = list(il), list(sl), [SOURCES[c] for c in cl]
                        seen = set(X.indices[X.indptr[row]:X.indptr[row + 1]].tolist()) if name == "discovery" else set()
                        fill_with_popular(il, sl, so, [{} for _ in il], pop_order, pop_score, k, seen, self.params.popular_days)
                        cl = [SOURCES.index(x) for x in so]
                    items[row, :len(il)] = il
                    scores[row, :len(sl)] = sl
                    codes[row, :len(cl)] = cl
        self.precomputed = out

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

    def recommend(self, customer_ids: Iterable, k: int = 20, new_only: bool = False, reasons: bool = True,
                  block: int | None = None) -> pd.DataFrame:
        """Top-k per customer. ``new_only``: the discovery list (items the customer never bought);
        ``reasons=False``: empty ``reason_data`` (scoring and export need only the lists)."""
        h = self._check_model().h
        ids = as_ids(customer_ids)
        if len(ids) == 0 or k <= 0:
            return empty_recs()
        rows = h.customer_index(ids)
        if self._precomputed_for("discovery" if new_only else "repeat", k):
            ranked = {int(r): self.ranked(int(r), new_only) for r in np.unique(rows[rows >= 0])}
            ranked = {r: (i[:k], s[:k], c[:k]) for r, (i, s, c) in ranked.items()}
        else:
            ranked = self._rank(rows, k, new_only, block)
        return self._frame(ids, rows, ranked, k, new_only, reasons)

    def _precomputed_for(self, name: str, k: int) -> bool:
        """Whether the precomputed ``name`` list serves a request for ``k`` items."""
        pre = self.precomputed.get(name)
        return pre is not None and k <= pre[0].shape[1]

    def lists(self, customer_ids: Iterable, k: int = 20) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Both lists without reasons; without precomputed lists, from one candidate pass."""
        if self._precomputed_for("repeat", k) and self._precomputed_for("discovery", k):
            return super().lists(customer_ids, k)
        h = self._check_model().h
        ids = as_ids(customer_ids)
        if len(ids) == 0 or k <= 0:
            return empty_recs(), empty_recs()
        rows = h.customer_index(ids)
        ranked: dict[str, dict] = {"repeat": {}, "discovery": {}}
        for r, lists in self._ranked_blocks(rows, k, ("repeat", "discovery")):
            for name, out in ranked.items():
                out.update(zip(r.tolist(), lists[name]))
        return (self._frame(ids, rows, ranked["repeat"], k, False, False),
                self._frame(ids, rows, ranked["discovery"], k, True, False))

    def _frame(self, ids: np.ndarray, rows: np.ndarray, ranked: dict, k: int, new_only: bool, reasons: bool) -> pd.DataFrame:
        """The list frame of ``ids`` from their ranked candidates (row -> items, scores, source codes),
        short lists topped up with popular items."""
        src = self._check_model()
        h = src.h
        pop_order, pop_score = self.popular_products()
        out_items, out_scores, out_src, out_rsn = [], [], [], []
        X = h.matrix()
        for row in rows:
            il, sl, cl = ranked.get(int(row), (np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)))
            rs = src.reasons(int(row), il, cl) if row >= 0 and reasons else [{} for _ in il]
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

        With a session model (trained on every basket, guests' included; :mod:`patron.training.recs.session`)
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
        """Attach a fitted :class:`~patron.training.recs.session.SessionModel` for anonymous baskets."""
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
        save_arrays(directory, self._state_arrays())
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
        arrays = load_arrays(directory)
        model = cls(**meta["params"])
        as_of = dt.datetime.fromisoformat(meta["as_of"])
        model.sources = Sources.from_arrays(arrays, "s_", as_of, model.params)
        model.rankers = {name: TreeEnsemble.from_arrays(arrays, f"rk_{name}_") for name in meta["rankers"]}
        model.precomputed = {name: (arrays[f"pre_{name}_items"], arrays[f"pre_{name}_scores"], arrays[f"pre_{name}_sources"])
                             for name in ("repeat", "discovery") if f"pre_{name}_items" in arrays}
        model.fit_info = meta.get("fit_info", {})
        if (directory / SESSION_DIR).is_dir():
            from patron.training.recs.session import SessionModel

            model.set_session(SessionModel.load(directory / SESSION_DIR))
        return model

    def _set_state(self, arrays, meta, directory) -> None:  # pragma: no cover - load() is overridden
        raise NotImplementedError
