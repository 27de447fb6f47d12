"""Recommendation baselines and the small contract every recommender of Patron follows.

The contract (:class:`RecommenderBase`), shared with :class:`training.recs.Recommender`::

    model = SomeRecommender(**params).fit(lines, as_of)      # learns from lines strictly before as_of
    recs = model.recommend(customer_ids, k=20, new_only=False)
    model.save(directory); same = SomeRecommender.load(directory)   # or training.recs.load_model

``recommend`` returns one row per recommended item with the columns
``customer_id, rank (1..k), item_id, score, source, reason_data`` (``reason_data``: a small dict of
plain JSON values from which a human reason can be written). With ``new_only`` only items the
customer never bought before ``as_of`` are listed. Unknown customers get the popular items
(``source == "popular"``), and lists a model cannot fill up to ``k`` are completed the same way.
Scores are comparable within a source only.

Models are saved as data, never as pickles: ``meta.json`` (format name and version, kind, parameters,
``as_of``, the item index), numpy arrays in ``arrays.npz`` (loaded with ``allow_pickle=False``) and
tables as Parquet. A directory written by another format version is refused.

Customers are indexed internally in the order of their first invoice (time, then invoice number),
not by id, so that renaming customers does not change any result.
"""

from __future__ import annotations

import datetime as dt
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from patron.training.formats import check_format

from patron.times import to_utc

FORMAT_NAME = "patron-recs"
FORMAT_VERSION = 1
META_FILE = "meta.json"
ARRAYS_FILE = "arrays.npz"
REC_COLUMNS = ["customer_id", "rank", "item_id", "score", "source", "reason_data"]
DAY = np.timedelta64(86_400_000_000, "us")

_REGISTRY: dict[str, type["RecommenderBase"]] = {}


class FormatVersionError(ValueError):
    """A saved model directory of another format (or version) than this code reads."""


class NotFittedError(RuntimeError):
    """The model was used before ``fit`` or ``load``."""


# --------------------------------------------------------------------------------------------
# Persistence helpers
# --------------------------------------------------------------------------------------------


def write_meta(directory: Path, kind: str, params: dict, **extra) -> None:
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": kind, "params": params, **extra}
    (directory / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))


def read_meta(directory: Path, kind: str | None = None) -> dict:
    """The meta.json of a saved model; refuses another format, format version or kind."""
    directory = Path(directory)
    path = directory / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a saved recommender: no {META_FILE}")
    meta = json.loads(path.read_text())
    check_format(meta, directory, FORMAT_NAME, FORMAT_VERSION, FormatVersionError)
    if kind is not None and meta.get("kind") != kind:
        raise FormatVersionError(f"{directory} holds a {meta.get('kind')!r} model, not {kind!r}")
    return meta


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    for name, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise TypeError(f"array {name!r} has dtype object; it would need a pickle")
    np.savez(path, **arrays)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def product_lines(lines: pd.DataFrame) -> pd.DataFrame:
    """The lines that name a product: exports without product detail still train churn and LTV,
    but there is nothing to recommend from them."""
    return lines[lines["item_id"].notna()] if lines["item_id"].isna().any() else lines


# --------------------------------------------------------------------------------------------
# Purchase history as of a date
# --------------------------------------------------------------------------------------------


@dataclass
class History:
    """Everything the models need to know about the lines before ``as_of``, as arrays.

    Ages are in days before ``as_of`` (float). The customer x item matrix ``n_inv`` counts the
    distinct invoices in which the customer bought the item; ``qty``, ``first_age`` and ``last_age``
    share its sparsity pattern (same ``indptr``/``indices``).
    """

    as_of: dt.datetime
    customers: np.ndarray  # int64, internal order (first invoice)
    items: np.ndarray  # str, sorted
    indptr: np.ndarray
    indices: np.ndarray
    n_inv: np.ndarray  # float32 per nonzero
    qty: np.ndarray
    first_age: np.ndarray
    last_age: np.ndarray
    inv_indptr: np.ndarray  # per customer: ages of their invoices, ascending age
    inv_age: np.ndarray
    inv_size: np.ndarray  # distinct items per invoice
    cust_spend: np.ndarray
    item_price: np.ndarray
    item_nonproduct: np.ndarray  # uint8

    # ---- construction
    @classmethod
    def from_lines(cls, lines: pd.DataFrame, as_of) -> "History":
        as_of = to_utc(as_of)
        t0 = pd.Timestamp(as_of)
        df = product_lines(lines[lines["invoice_ts"] < t0])
        if df.empty:
            raise ValueError(f"no order lines with a product before {as_of:%Y-%m-%d}")
        df = df.sort_values(["invoice_ts", "invoice_no"], kind="stable")
        customers = df["customer_id"].drop_duplicates().to_numpy(np.int64)
        items = np.sort(df["item_id"].astype(str).unique()).astype(str)
        c_map = pd.Series(np.arange(len(customers)), index=customers)
        ci = c_map.reindex(df["customer_id"].to_numpy()).to_numpy()
        ii = np.searchsorted(items, df["item_id"].astype(str).to_numpy())
        age = ((t0 - df["invoice_ts"]).to_numpy() / DAY).astype(np.float64)
        d = pd.DataFrame({"c": ci, "i": ii, "inv": df["invoice_no"].to_numpy(), "qty": df["quantity"].to_numpy(),
                          "age": age, "amount": df["amount"].to_numpy(), "price": df["unit_price"].to_numpy()})
        g = d.groupby(["c", "i"], sort=True).agg(n_inv=("inv", "nunique"), qty=("qty", "sum"),
                                                 first_age=("age", "max"), last_age=("age", "min"))
        c_idx = g.index.get_level_values(0).to_numpy()
        i_idx = g.index.get_level_values(1).to_numpy()
        indptr = np.zeros(len(customers) + 1, np.int64)
        np.add.at(indptr, c_idx + 1, 1)
        indptr = np.cumsum(indptr)
        invs = d.groupby(["c", "inv"], sort=False).agg(age=("age", "min"), size=("i", "nunique")).reset_index()
        invs = invs.sort_values(["c", "age"], kind="stable")
        inv_indptr = np.zeros(len(customers) + 1, np.int64)
        np.add.at(inv_indptr, invs["c"].to_numpy() + 1, 1)
        inv_indptr = np.cumsum(inv_indptr)
        spend = np.bincount(ci, weights=d["amount"].to_numpy(), minlength=len(customers))
        price = d.groupby("i")["price"].median().reindex(np.arange(len(items))).to_numpy()
        nonprod = np.zeros(len(items), np.uint8)
        if "line_class" in df.columns:
            np_items = np.unique(ii[df["line_class"].to_numpy() == "non_product"])
            nonprod[np_items] = 1
        return cls(
            as_of=as_of, customers=customers, items=items, indptr=indptr, indices=i_idx.astype(np.int32),
            n_inv=g["n_inv"].to_numpy(np.float32), qty=g["qty"].to_numpy(np.float32),
            first_age=g["first_age"].to_numpy(np.float32), last_age=g["last_age"].to_numpy(np.float32),
            inv_indptr=inv_indptr, inv_age=invs["age"].to_numpy(np.float32), inv_size=invs["size"].to_numpy(np.float32),
            cust_spend=spend.astype(np.float32), item_price=price.astype(np.float32), item_nonproduct=nonprod,
        )

    # ---- persistence
    _ARRAYS: ClassVar[tuple[str, ...]] = ("customers", "items", "indptr", "indices", "n_inv", "qty", "first_age",
                                          "last_age", "inv_indptr", "inv_age", "inv_size", "cust_spend",
                                          "item_price", "item_nonproduct")

    def to_arrays(self, prefix: str = "h_") -> dict[str, np.ndarray]:
        return {prefix + k: getattr(self, k) for k in self._ARRAYS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], as_of: dt.datetime, prefix: str = "h_") -> "History":
        kw = {k: arrays[prefix + k] for k in cls._ARRAYS}
        kw["items"] = kw["items"].astype(str)
        return cls(as_of=as_of, **kw)

    # ---- views
    @property
    def n_customers(self) -> int:
        return len(self.customers)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def matrix(self, values: np.ndarray | None = None, dtype=np.float32) -> sp.csr_matrix:
        data = np.ones(len(self.indices), dtype) if values is None else values.astype(dtype)
        return sp.csr_matrix((data, self.indices, self.indptr), shape=(self.n_customers, self.n_items))

    def customer_index(self, customer_ids: Iterable) -> np.ndarray:
        """Internal row of each customer id, -1 for unknown customers."""
        ids = np.asarray(list(customer_ids) if not isinstance(customer_ids, np.ndarray) else customer_ids)
        if ids.size == 0:
            return np.zeros(0, np.int64)
        s = pd.Series(np.arange(self.n_customers), index=self.customers)
        return s.reindex(ids.astype(np.int64)).fillna(-1).to_numpy(np.int64)

    def item_index(self, item_ids: Iterable) -> np.ndarray:
        ids = np.asarray([str(x) for x in item_ids], dtype=str)
        if ids.size == 0:
            return np.zeros(0, np.int64)
        pos = np.searchsorted(self.items, ids)
        pos = np.clip(pos, 0, max(self.n_items - 1, 0))
        return np.where(self.items[pos] == ids, pos, -1).astype(np.int64)

    def item_buyers(self, days: float | None = None) -> np.ndarray:
        """Distinct buyers per item in the last ``days`` days (all time with None)."""
        mask = np.ones(len(self.indices), bool) if days is None else self.last_age < days
        return np.bincount(self.indices[mask], minlength=self.n_items).astype(np.float64)

    def popular_order(self, days: float | None = 30) -> tuple[np.ndarray, np.ndarray]:
        """The popular list, the one every recommender, fill-up and endpoint uses: products (never
        service lines such as postage) by distinct buyers in the last ``days`` days, ties by
        all-time buyers, then by id. Also returns every item's buyers in the window."""
        recent = self.item_buyers(days)
        total = self.item_buyers(None)
        order = np.lexsort((np.arange(self.n_items), -total, -recent))
        return order[self.item_nonproduct[order] == 0], recent


# --------------------------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------------------------


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest entries of each row, best first (ties: lower index first)."""
    n, m = scores.shape
    k = min(k, m)
    if k <= 0:
        return np.zeros((n, 0), np.int64)
    if k < m:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(m), (n, 1))
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1)


def fill_with_popular(items: list, scores: list, sources: list, reasons: list, pop_order: np.ndarray,
                      pop_score: np.ndarray, k: int, exclude: set, days: float) -> None:
    """Top a list shorter than k up with popular items that are neither in it nor in ``exclude``."""
    have = set(items)
    for i in pop_order:
        if len(items) >= k:
            break
        if i in have or i in exclude:
            continue
        items.append(int(i)); scores.append(float(pop_score[i])); sources.append("popular")
        reasons.append({"buyers": int(pop_score[i]), "days": days})


def empty_recs() -> pd.DataFrame:
    return pd.DataFrame({"customer_id": pd.Series(dtype=np.int64), "rank": pd.Series(dtype=np.int64),
                         "item_id": pd.Series(dtype=str), "score": pd.Series(dtype=np.float64),
                         "source": pd.Series(dtype=str), "reason_data": pd.Series(dtype=object)})


def build_frame(customer_ids: np.ndarray, item_lists: list[list[int]], scores: list[list[float]],
                sources: list[list[str]], reasons: list[list[dict]], items: np.ndarray) -> pd.DataFrame:
    cust, rank, it, sc, so, rd = [], [], [], [], [], []
    for c, il, sl, srl, rl in zip(customer_ids, item_lists, scores, sources, reasons):
        for r, (i, s, src, reason) in enumerate(zip(il, sl, srl, rl), start=1):
            cust.append(int(c))
            rank.append(r)
            it.append(str(items[i]))
            sc.append(float(s))
            so.append(src)
            rd.append(reason)
    if not cust:
        return empty_recs()
    return pd.DataFrame({"customer_id": np.array(cust, np.int64), "rank": np.array(rank, np.int64), "item_id": it,
                         "score": np.array(sc, np.float64), "source": so, "reason_data": rd})[REC_COLUMNS]


# --------------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------------


class RecommenderBase(ABC):
    """fit / recommend / save / load, shared by the baselines and the learned recommender."""

    kind: ClassVar[str] = ""
    history: History | None = None

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.kind:
            _REGISTRY[cls.kind] = cls

    # ---- to implement
    @abstractmethod
    def get_params(self) -> dict:
        """Constructor parameters (JSON values): what MLflow should log and ``load`` passes back."""

    @abstractmethod
    def fit(self, lines: pd.DataFrame, as_of) -> Self:
        """Learn from the lines strictly before ``as_of`` (later lines are ignored)."""

    @abstractmethod
    def recommend(self, customer_ids: Iterable, k: int = 20, new_only: bool = False) -> pd.DataFrame:
        """Top-k lists (columns :data:`REC_COLUMNS`); ``new_only``: items the customer never bought."""

    @abstractmethod
    def _state_arrays(self) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict, directory: Path) -> None: ...

    # ---- shared
    @property
    def as_of(self) -> dt.datetime | None:
        return None if self.history is None else self.history.as_of

    def _check_fitted(self) -> History:
        if self.history is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit() or load()")
        return self.history

    def save(self, directory: Path) -> Path:
        """Write the model as data into ``directory`` (created; existing model files replaced)."""
        h = self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {**h.to_arrays(), **self._state_arrays()}
        save_arrays(directory / ARRAYS_FILE, arrays)
        self._save_tables(directory)
        write_meta(directory, self.kind, self.get_params(), as_of=h.as_of.isoformat(),
                   n_customers=h.n_customers, n_items=h.n_items, **self._extra_meta())
        return directory

    def _save_tables(self, directory: Path) -> None:
        """Parquet tables of the model, if any."""

    def _extra_meta(self) -> dict:
        return {}

    @classmethod
    def load(cls, directory: Path) -> Self:
        directory = Path(directory)
        meta = read_meta(directory, cls.kind)
        arrays = load_arrays(directory / ARRAYS_FILE)
        model = cls(**meta["params"])
        model.history = History.from_arrays(arrays, dt.datetime.fromisoformat(meta["as_of"]))
        model._set_state(arrays, meta, directory)
        return model

    def popular(self, k: int = 10, days: float | None = None) -> pd.DataFrame:
        """The first ``k`` of the popular list (:meth:`History.popular_order`)."""
        h = self._check_fitted()
        days = self._popular_days() if days is None else days
        order, recent = h.popular_order(days)
        top = order[:k]
        return pd.DataFrame({"rank": np.arange(1, len(top) + 1), "item_id": h.items[top].tolist(),
                             "score": recent[top], "source": "popular",
                             "reason_data": [{"buyers": int(recent[i]), "days": days} for i in top]})

    def _popular_days(self) -> float:
        return 30.0

    # Generic scoring path for models that produce a dense (customers x items) score matrix.
    def _dense_scores(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _source_name(self) -> str:
        return self.kind

    def _reason(self, row: int, item: int, score: float) -> dict:
        return {}

    def _recommend_dense(self, customer_ids: Iterable, k: int, new_only: bool, block: int = 512) -> pd.DataFrame:
        h = self._check_fitted()
        ids = np.asarray(list(customer_ids) if not isinstance(customer_ids, np.ndarray) else customer_ids, np.int64)
        rows = h.customer_index(ids)
        pop_order, pop_score = h.popular_order(self._popular_days())
        X = h.matrix()
        lists, scs, srcs, rsns = [], [], [], []
        for start in range(0, len(ids), block):
            r = rows[start:start + block]
            known = r >= 0
            dense = np.full((len(r), h.n_items), -np.inf)
            if known.any():
                dense[known] = self._dense_scores(r[known])
            top = top_k_rows(dense, k)
            for j in range(len(r)):
                seen = set(X.indices[X.indptr[r[j]]:X.indptr[r[j] + 1]].tolist()) if r[j] >= 0 else set()
                il, sl, srl, rl = [], [], [], []
                for i in top[j]:
                    s = dense[j, i]
                    if not np.isfinite(s) or (new_only and i in seen):
                        continue
                    il.append(int(i)); sl.append(float(s)); srl.append(self._source_name())
                    rl.append(self._reason(int(r[j]), int(i), float(s)))
                if new_only and len(il) < k:
                    # the dense top-k may have been used up by seen items: take more
                    cand = np.argsort(-dense[j], kind="stable")
                    il, sl, srl, rl = [], [], [], []
                    for i in cand:
                        if len(il) >= k or not np.isfinite(dense[j, i]):
                            break
                        if i in seen:
                            continue
                        il.append(int(i)); sl.append(float(dense[j, i])); srl.append(self._source_name())
                        rl.append(self._reason(int(r[j]), int(i), float(dense[j, i])))
                if len(il) < k:
                    fill_with_popular(il, sl, srl, rl, pop_order, pop_score, k, seen if new_only else set(), self._popular_days())
                lists.append(il); scs.append(sl); srcs.append(srl); rsns.append(rl)
        return build_frame(ids, lists, scs, srcs, rsns, h.items)


# --------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------


class PopularityRecommender(RecommenderBase):
    """The items with the most distinct buyers in the last ``days`` days, the same for everyone."""

    kind = "popularity"

    def __init__(self, days: float = 30.0):
        self.days = float(days)

    def get_params(self) -> dict:
        return {"days": self.days}

    def _popular_days(self) -> float:
        return self.days

    def fit(self, lines: pd.DataFrame, as_of) -> Self:
        self.history = History.from_lines(lines, as_of)
        return self

    def recommend(self, customer_ids: Iterable, k: int = 20, new_only: bool = False) -> pd.DataFrame:
        return self._recommend_dense(customer_ids, k, new_only)

    def _dense_scores(self, rows: np.ndarray) -> np.ndarray:
        return np.full((len(rows), self._check_fitted().n_items), -np.inf)  # everything comes from the fill

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _set_state(self, arrays, meta, directory) -> None:
        pass


class BuyAgainRecommender(RecommenderBase):
    """The customer's own items by number of orders that contained them, ties by recency."""

    kind = "buy_again"

    def __init__(self, popular_days: float = 30.0):
        self.popular_days = float(popular_days)

    def get_params(self) -> dict:
        return {"popular_days": self.popular_days}

    def _popular_days(self) -> float:
        return self.popular_days

    def fit(self, lines: pd.DataFrame, as_of) -> Self:
        self.history = History.from_lines(lines, as_of)
        return self

    def recommend(self, customer_ids: Iterable, k: int = 20, new_only: bool = False) -> pd.DataFrame:
        return self._recommend_dense(customer_ids, k, new_only)

    def _source_name(self) -> str:
        return "buy_again"

    def _dense_scores(self, rows: np.ndarray) -> np.ndarray:
        h = self._check_fitted()
        # count + a recency tie-breaker in (0, 0.5]
        val = h.n_inv + 0.5 * np.exp(-h.last_age / 365.0)
        m = h.matrix(val, np.float64)[rows].toarray()
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


class EASERecommender(RecommenderBase):
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

    def fit(self, lines: pd.DataFrame, as_of) -> Self:
        h = History.from_lines(lines, as_of)
        self.history = h
        X = h.matrix()
        self.cols = np.flatnonzero(h.item_buyers(None) >= self.min_buyers)
        self.B = ease_weights(X[:, self.cols].tocsr(), self.lam)
        return self

    def recommend(self, customer_ids: Iterable, k: int = 20, new_only: bool = False) -> pd.DataFrame:
        return self._recommend_dense(customer_ids, k, new_only)

    def _dense_scores(self, rows: np.ndarray) -> np.ndarray:
        h = self._check_fitted()
        Xr = h.matrix()[rows][:, self.cols]
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

    model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=1.0,
                                    iterations=iterations, random_state=seed, num_threads=num_threads)
    with threadpool_limits(1, "blas"):
        model.fit(C.tocsr(), show_progress=False)
    return np.asarray(model.user_factors, np.float32), np.asarray(model.item_factors, np.float32)


class ALSRecommender(RecommenderBase):
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

    def fit(self, lines: pd.DataFrame, as_of) -> Self:
        h = History.from_lines(lines, as_of)
        self.history = h
        self.user_factors, self.item_factors = fit_als(als_confidence(h, self.alpha), self.factors,
                                                       self.regularization, self.iterations, self.seed)
        return self

    def recommend(self, customer_ids: Iterable, k: int = 20, new_only: bool = False) -> pd.DataFrame:
        return self._recommend_dense(customer_ids, k, new_only)

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
