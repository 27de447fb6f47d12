"""The small contract every recommender of Patron follows, and how recommenders persist.

The contract (:class:`RecommenderBase`), shared with :class:`~patron.training.recs.model.Recommender`::

    model = SomeRecommender(**params).fit(lines, as_of)      # learns from lines strictly before as_of
    recs = model.recommend(customer_ids, k=20, new_only=False)
    model.save(directory); same = SomeRecommender.load(directory)   # or load_model(directory)

``recommend`` returns one row per recommended item with the columns
``customer_id, rank (1..k), item_id, score, source, reason_data`` (``reason_data``: a small dict of
plain JSON values from which a human reason can be written). With ``new_only`` only items the
customer never bought before ``as_of`` are listed. Unknown customers get the popular items
(``source == "popular"``), and lists a model cannot fill up to ``k`` are completed the same way.
Scores are comparable within a source only.

Models are saved as data, never as pickles: ``meta.json`` (format name and version, kind, parameters,
``as_of``, the item index), numpy arrays as one ``.npy`` file each in ``arrays/`` (loaded with
``allow_pickle=False`` and memory-mapped: every service worker shares one copy of the per-customer
arrays through the page cache, instead of each holding its own) and tables as Parquet. Format
version 1 (the arrays in one ``arrays.npz``, read into memory) still loads; another format
version is refused.

Customers are indexed internally in the order of their first invoice (time, then invoice number),
not by id, so that renaming customers does not change any result.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import pandas as pd

from patron.errors import NotFittedError, PatronError
from patron.training.formats import check_format
from patron.training.recs.history import History, as_ids

FORMAT_NAME = "patron-recs"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
META_FILE = "meta.json"
ARRAYS_DIR = "arrays"  # one .npy per array (format 2)
ARRAYS_NPZ = "arrays.npz"  # format 1
REC_COLUMNS = ["customer_id", "rank", "item_id", "score", "source", "reason_data"]
# every recommender class by its saved ``kind``: how load_model finds the class of a directory
KINDS: dict[str, type["RecommenderBase"]] = {}


class FormatVersionError(PatronError, ValueError):
    """A saved model directory of another format (or version) than this code reads."""


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
    check_format(meta, directory, FORMAT_NAME, READABLE_VERSIONS, FormatVersionError)
    if kind is not None and meta.get("kind") != kind:
        raise FormatVersionError(f"{directory} holds a {meta.get('kind')!r} model, not {kind!r}")
    return meta


def save_arrays(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    """Each array as ``arrays/<name>.npy`` in a model directory (replacing what was there)."""
    for name, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise TypeError(f"array {name!r} has dtype object; it would need a pickle")
        if not name.replace("_", "").isalnum():
            raise ValueError(f"array name {name!r} is not a plain identifier")
    folder = Path(directory) / ARRAYS_DIR
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, a in arrays.items():
        np.save(folder / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)
    (Path(directory) / ARRAYS_NPZ).unlink(missing_ok=True)


def load_arrays(directory: Path) -> dict[str, np.ndarray]:
    """The arrays of a model directory: memory-mapped read-only (format 2), or read (format 1)."""
    folder = Path(directory) / ARRAYS_DIR
    if folder.is_dir():
        return {p.stem: np.load(p, mmap_mode="r", allow_pickle=False).view(np.ndarray) for p in sorted(folder.glob("*.npy"))}
    npz = Path(directory) / ARRAYS_NPZ
    if not npz.is_file():
        raise FileNotFoundError(f"{directory} is not a saved recommender: no {ARRAYS_DIR}/ nor {ARRAYS_NPZ}")
    with np.load(npz, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


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
            KINDS[cls.kind] = cls

    # ---- to implement
    @abstractmethod
    def get_params(self) -> dict:
        """Constructor parameters (JSON values): what MLflow should log and ``load`` passes back."""

    def fit(self, lines, as_of) -> Self:
        """Learn from the lines strictly before ``as_of`` (later lines are ignored): a frame, a
        data folder or :class:`~patron.training.recs.lines.OrderLines`."""
        return self.fit_history(History.from_lines(lines, as_of))

    def fit_history(self, h: History) -> Self:
        """Learn from a history already built (:meth:`History.from_lines`): the same as
        :meth:`fit` on its lines, without building it again."""
        raise NotImplementedError(f"{type(self).__name__} fits from lines only")

    @abstractmethod
    def recommend(self, customer_ids: Iterable, k: int = 20, new_only: bool = False, reasons: bool = True) -> pd.DataFrame:
        """Top-k lists (columns :data:`REC_COLUMNS`); ``new_only``: items the customer never bought;
        ``reasons=False``: empty ``reason_data`` (scoring and export need only the lists)."""

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
        save_arrays(directory, arrays)
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
        arrays = load_arrays(directory)
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

    def lists(self, customer_ids: Iterable, k: int = 20) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Both lists without reasons, as scoring and the export take them: ``(all items, only items
        never bought)``."""
        return (self.recommend(customer_ids, k, reasons=False),
                self.recommend(customer_ids, k, new_only=True, reasons=False))


class DenseRecommender(RecommenderBase):
    """A model that scores every item for a block of customers (``_dense_scores``): both lists of a
    block come from one scoring of it."""

    # False: no item is ever scored (every list comes from the popular fill), so no block of
    # scores is made or searched
    scores_items = True

    @abstractmethod
    def _dense_scores(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows) x items) scores of known customer rows; -inf: never recommended."""

    def _source_name(self) -> str:
        return self.kind

    def _reason(self, row: int, item: int, score: float) -> dict:
        return {}

    def recommend(self, customer_ids: Iterable, k: int = 20, new_only: bool = False, reasons: bool = True) -> pd.DataFrame:
        return self._dense_lists(customer_ids, k, (new_only,), reasons=reasons)[new_only]

    def lists(self, customer_ids: Iterable, k: int = 20) -> tuple[pd.DataFrame, pd.DataFrame]:
        both = self._dense_lists(customer_ids, k, (False, True), reasons=False)
        return both[False], both[True]

    def _dense_lists(self, customer_ids: Iterable, k: int, which: tuple[bool, ...], block: int = 512,
                     reasons: bool = True) -> dict[bool, pd.DataFrame]:
        """``{new_only: list frame}`` for each of ``which``: the top k of the scores (ties: lower item
        index first), for discovery among the items never bought, topped up with popular items."""
        h = self._check_fitted()
        ids = as_ids(customer_ids)
        rows = h.customer_index(ids)
        pop_order, pop_score = h.popular_order(self._popular_days())
        X = h.matrix()
        name = self._source_name()
        which = tuple(sorted(set(which)))  # all items first: discovery masks the scores in place
        out = {w: ([], [], [], []) for w in which}
        for start in range(0, len(ids), block):
            r = rows[start:start + block]
            known = np.flatnonzero(r >= 0)
            dense = np.full((len(r), h.n_items if self.scores_items else 0), -np.inf)
            if len(known) and self.scores_items:
                dense[known] = self._dense_scores(r[known])
            Xr = X[r[known]]
            for new_only in which:
                if new_only and self.scores_items:  # what the customer bought is never listed
                    dense[np.repeat(known, np.diff(Xr.indptr)), Xr.indices] = -np.inf
                top = top_k_rows(dense, k)
                vals = np.take_along_axis(dense, top, axis=1)
                items, scores, sources, rsns = out[new_only]
                for j in range(len(r)):
                    ok = np.isfinite(vals[j])
                    il, sl = top[j][ok].tolist(), vals[j][ok].tolist()
                    rl = [self._reason(int(r[j]), i, s) for i, s in zip(il, sl)] if reasons else [{} for _ in il]
                    srl = [name] * len(il)
                    if len(il) < k:
                        seen = set(X.indices[X.indptr[r[j]]:X.indptr[r[j] + 1]].tolist()) if new_only and r[j] >= 0 else set()
                        fill_with_popular(il, sl, srl, rl, pop_order, pop_score, k, seen, self._popular_days())
                    items.append(il); scores.append(sl); sources.append(srl); rsns.append(rl)
        return {w: build_frame(ids, *out[w], h.items) for w in which}


def load_model(directory: Path) -> "RecommenderBase":
    """Load any saved recommender (baseline or learned) by the kind in its meta.json."""
    meta = read_meta(Path(directory))
    cls = KINDS.get(meta["kind"])
    if cls is None:
        raise FormatVersionError(f"unknown recommender kind {meta['kind']!r} in {directory}")
    return cls.load(directory)
