"""Top-N selection for a block of customers, without sorting whole rows.

A candidate source scores every item for a customer, but only its first few hundred items matter:
they nominate candidates and give the ranker their rank. These helpers select the first ``cap``
entries of each row (by decreasing score, ties: lower column first, exactly as a stable sort of the
whole row would) with a partition, and return them as ``(row, column, rank)`` triples, so that
nothing per block is sorted over the whole catalogue. A block is at most a few million
(customer, item) entries, whatever the shop's size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import scipy.sparse as sp

T = TypeVar("T")


def pair_keys(rows: np.ndarray, cols: np.ndarray, n_cols: int) -> np.ndarray:
    return np.asarray(rows, np.int64) * np.int64(n_cols) + np.asarray(cols, np.int64)


def rank_table(shape: tuple[int, int], selected: tuple[np.ndarray, np.ndarray, np.ndarray], missing: float) -> np.ndarray:
    """A block's ranks as a dense table (float32), ``missing`` where nothing was selected."""
    table = np.full(shape, missing, np.float32)
    rows, cols, ranks = selected
    table[rows, cols] = ranks
    return table


_MAX_KEY_ROWS, _MAX_KEY_COLS = 1 << 10, 1 << 22  # 10 bits of row, 32 of score, 22 of column


_SIGN = np.uint32(0x80000000)


def _sorted_keys(rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
    """64-bit keys of (row, decreasing value, column), sorted: the float32 value's bits made
    order-preserving, so one sort replaces a stable argsort per row."""
    b = (values.astype(np.float32) + np.float32(0.0)).view(np.uint32)  # + 0.0: -0.0 ties with 0.0
    ascending = np.where(b & _SIGN, ~b, b | _SIGN)
    key = ((rows.astype(np.uint64) << np.uint64(54)) | ((~ascending).astype(np.uint64) << np.uint64(22))
           | cols.astype(np.uint64))
    key.sort()
    return key


def _key_order(rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) ordered by row, then decreasing value, then column (:func:`_sorted_keys`)."""
    key = _sorted_keys(rows, cols, values)
    return (key >> np.uint64(54)).astype(np.int64), (key & np.uint64(_MAX_KEY_COLS - 1)).astype(np.int64)


def _firsts(rows: np.ndarray, n_rows: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """For entries sorted by row: which are among the first ``cap`` of their row, and their rank."""
    counts = np.bincount(rows, minlength=n_rows)
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    return rank < cap, rank


def top_entries(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_rows: int, cap: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``cap`` of each row among entries given as (rows in [0, n_rows), cols, float32
    values), by decreasing value, ties: lower column first; returned as (rows, cols, values) in
    that order (-0.0 comes back as 0.0)."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    values = np.asarray(values, np.float32)
    if n_rows <= _MAX_KEY_ROWS and (len(cols) == 0 or int(cols.max()) < _MAX_KEY_COLS):
        key = _sorted_keys(rows, cols, values)
        rows, cols = (key >> np.uint64(54)).astype(np.int64), (key & np.uint64(_MAX_KEY_COLS - 1)).astype(np.int64)
        ascending = (~(key >> np.uint64(22))).astype(np.uint32)
        values = np.where(ascending & _SIGN, ascending & ~_SIGN, ~ascending).view(np.float32)
    else:
        order = np.lexsort((cols, -values, rows))
        rows, cols, values = rows[order], cols[order], values[order]
    keep, _ = _firsts(rows, n_rows, cap)
    return rows[keep], cols[keep], values[keep]


def top_dense(scores: np.ndarray, cap: int, exclude: tuple[np.ndarray, np.ndarray] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``cap`` finite entries of each row of a dense block, by decreasing score (ties:
    lower column first), as ``(rows, cols, ranks)`` sorted by row then rank. ``exclude``: (rows,
    cols) of entries that take no part (their rank is not counted for the others either)."""
    n_rows, n_cols = scores.shape
    k = min(int(cap), n_cols)
    if k <= 0 or n_rows == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    excluding = exclude is not None and len(exclude[0]) > 0
    finite = np.isfinite(scores)
    if excluding or not finite.all():  # a copy only when some entries take no part
        s = np.where(finite, scores, -np.inf)
        if excluding:
            s[exclude[0], exclude[1]] = -np.inf
    else:
        s = scores
    # the k-th largest score of each row: everything at or above it is in, but where it is tied,
    # only as many of the tied entries as there is room for, the lower columns first
    kth = np.partition(s, n_cols - k, axis=1)[:, n_cols - k:n_cols - k + 1]
    chosen = s >= kth
    crowded = np.flatnonzero(chosen.sum(axis=1) > k)
    if len(crowded):
        sc, kc = s[crowded], kth[crowded]
        above = sc > kc
        t = sc == kc
        room = k - above.sum(axis=1)
        chosen[crowded] = above | (t & (np.cumsum(t, axis=1) <= room[:, None]))
    short = np.flatnonzero(np.isneginf(kth[:, 0]))  # rows with fewer than k entries that take part
    if len(short):
        chosen[short] &= s[short] > -np.inf
    rows, cols = np.nonzero(chosen)  # row, then column order
    counts = np.bincount(rows, minlength=n_rows)
    if s.dtype == np.float32 and n_rows <= _MAX_KEY_ROWS and n_cols <= _MAX_KEY_COLS:
        rows, cols = _key_order(rows, cols, s[rows, cols])
    elif (counts == k).all():  # k per row, sorted row by row (stable: lower column first)
        c2 = cols.reshape(n_rows, k)
        order = np.argsort(-np.take_along_axis(s, c2, axis=1), axis=1, kind="stable")
        cols = np.take_along_axis(c2, order, axis=1).ravel()
    else:
        order = np.lexsort((cols, -s[rows, cols], rows))
        rows, cols = rows[order], cols[order]
    starts = np.cumsum(counts) - counts
    ranks = np.arange(len(rows)) - starts[rows]
    return rows.astype(np.int64), cols.astype(np.int64), ranks.astype(np.int64)


def top_dense_both(scores: np.ndarray, cap: int, seen: tuple[np.ndarray, np.ndarray]):
    """``(top_dense(scores, cap), top_dense(scores, cap, seen))`` from one selection: the first
    ``cap + (most seen entries of a row)`` entries of each row hold every unseen entry among a row's
    first ``cap`` unseen ones (at most that many seen entries rank above it), so both lists are
    prefixes of it, the second after dropping what was seen."""
    n_rows, n_cols = scores.shape
    seen_rows, seen_cols = (np.asarray(a, np.int64) for a in seen)
    most_seen = int(np.bincount(seen_rows, minlength=n_rows).max(initial=0)) if n_rows else 0
    rows, cols, ranks = top_dense(scores, cap + most_seen)
    head = ranks < cap
    every = rows[head], cols[head], ranks[head]
    if len(seen_rows):
        seen_mask = np.zeros((n_rows, n_cols), bool)  # the block's size: a lookup, not a search
        seen_mask[seen_rows, seen_cols] = True
        unseen = ~seen_mask[rows, cols]
        rows, cols = rows[unseen], cols[unseen]
    counts = np.bincount(rows, minlength=n_rows)
    urank = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows]
    keep = urank < cap
    return every, (rows[keep], cols[keep], urank[keep].astype(np.int64))


def top_sparse_both(scores: sp.csr_matrix, cap: int, seen: tuple[np.ndarray, np.ndarray]):
    """:func:`top_dense_both` of a sparse block whose absent entries take no part: the first ``cap``
    stored entries of each row with a positive score (by decreasing score, ties: lower column
    first), and the first ``cap`` of those not ``seen``. Costs a sort of the stored entries, not a
    pass over the catalogue."""
    m = scores.tocoo()
    positive = m.data > 0
    rows, cols, values = m.row[positive].astype(np.int64), m.col[positive].astype(np.int64), m.data[positive]
    n_rows, n_cols = scores.shape
    if values.dtype == np.float32 and n_rows <= _MAX_KEY_ROWS and n_cols <= _MAX_KEY_COLS:
        rows, cols = _key_order(rows, cols, values)
    else:
        order = np.lexsort((cols, -values, rows))
        rows, cols = rows[order], cols[order]

    def firsts(r: np.ndarray, c: np.ndarray):
        keep, rank = _firsts(r, n_rows, cap)
        return r[keep], c[keep], rank[keep].astype(np.int64)

    unseen = ~np.isin(pair_keys(rows, cols, n_cols), pair_keys(*seen, n_cols))
    return firsts(rows, cols), firsts(rows[unseen], cols[unseen])


def _global_positions(order: np.ndarray, n_cols: int) -> np.ndarray:
    g = np.full(n_cols, -1, np.int64)
    g[order] = np.arange(len(order))
    return g


def top_global(order: np.ndarray, n_cols: int, seen: tuple[np.ndarray, np.ndarray], n_rows: int, n: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``n`` items of one global ``order`` (the same scores for every row) that each row
    has not ``seen`` (rows, cols), as ``(rows, cols, ranks among the unseen)``."""
    if n <= 0 or n_rows == 0 or len(order) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    seen_rows, seen_cols = seen
    g = _global_positions(order, n_cols)[seen_cols]
    seen_count = np.bincount(seen_rows[g >= 0], minlength=n_rows)
    width = min(len(order), n + int(seen_count.max(initial=0)))
    head_seen = np.zeros((n_rows, width), bool)
    inside = (g >= 0) & (g < width)
    head_seen[seen_rows[inside], g[inside]] = True
    urank = np.cumsum(~head_seen, axis=1) - 1
    rows, at = np.nonzero(~head_seen & (urank < n))
    return rows.astype(np.int64), order[at].astype(np.int64), urank[rows, at].astype(np.int64)


def global_unseen_rank(order: np.ndarray, n_cols: int, seen: tuple[np.ndarray, np.ndarray],
                       rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """For pairs (row, col) of items the row has not seen: the item's rank in the global ``order``
    among the items the row has not ``seen`` (NaN for items outside the order)."""
    g = _global_positions(order, n_cols)
    gp = g[np.asarray(cols, np.int64)]
    seen_rows, seen_cols = seen
    seen_g = g[seen_cols]
    inside = seen_g >= 0
    stride = np.int64(n_cols + 1)
    seen_keys = np.sort(np.asarray(seen_rows, np.int64)[inside] * stride + seen_g[inside])
    r = np.asarray(rows, np.int64) * stride
    ahead = np.searchsorted(seen_keys, r + gp) - np.searchsorted(seen_keys, r)
    return np.where(gp >= 0, (gp - ahead).astype(np.float64), np.nan)


def block_rows(n_items: int, entries: int = 2_000_000) -> int:
    """Customers per block: a block's dense arrays hold about ``entries`` (customer, item) cells."""
    return int(min(1024, max(64, entries // max(int(n_items), 1))))


def map_blocks(fn: Callable[[np.ndarray], T], rows: np.ndarray, block: int, workers: int | None = None) -> Iterator[T]:
    """``fn`` of each block of ``rows``, in order, computed by ``workers`` threads (default: the
    cores this process may use, at most 4). NumPy lets go of the interpreter inside its large
    operations, so blocks overlap; BLAS keeps one thread per worker, not one per core each."""
    from threadpoolctl import threadpool_limits

    blocks = [rows[i:i + block] for i in range(0, len(rows), block)]
    workers = min(4, len(os.sched_getaffinity(0))) if workers is None else workers
    if workers <= 1 or len(blocks) <= 1:
        yield from (fn(b) for b in blocks)
        return
    with threadpool_limits(1, "blas"), ThreadPoolExecutor(workers) as pool:
        pending = [pool.submit(fn, b) for b in blocks[:2 * workers]]
        for nxt in blocks[2 * workers:] + [None] * min(len(blocks), 2 * workers):
            done = pending.pop(0).result()
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield done
