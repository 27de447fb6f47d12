"""Evaluation protocol and metrics for recommendation lists.

Protocol (one split = ``as_of`` and a horizon of ``H`` days):

* population: customers with a valid purchase strictly before ``as_of``;
* ground truth per customer: the distinct items they bought in ``[as_of, as_of + H)`` that existed
  before ``as_of`` (bought by anyone before ``as_of``); with ``new_only`` ("discovery"), only the
  items the customer never bought before ``as_of``;
* customers whose truth set is empty are skipped; a customer of the population with a non-empty
  truth set but no list scores 0;
* recall@k = hits / min(k, |truth|); NDCG@k with binary relevance, ideal DCG over min(k, |truth|)
  items; both averaged over the customers with a non-empty truth set.

A recommendation list is a DataFrame with the columns ``customer_id, rank (1..k), item_id, score,
source``; extra columns are ignored.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from patron.times import to_utc
from patron.training.recs.lines import OrderLines, epoch_us

Truth = Mapping[int, frozenset]


def recall_at_k(ranked: Sequence, truth: Iterable, k: int = 20) -> float:
    """Hits among the first ``k`` items divided by ``min(k, |truth|)``; 0.0 for an empty truth."""
    truth = set(truth)
    if not truth or k <= 0:
        return 0.0
    top = _dedup(ranked)[:k]
    hits = sum(1 for x in top if x in truth)
    return hits / min(k, len(truth))


def ndcg_at_k(ranked: Sequence, truth: Iterable, k: int = 20) -> float:
    """Binary-relevance NDCG@k: DCG = sum of 1/log2(rank + 1) over hits; the ideal DCG puts
    ``min(k, |truth|)`` hits at the top. 0.0 for an empty truth."""
    truth = set(truth)
    if not truth or k <= 0:
        return 0.0
    top = _dedup(ranked)[:k]
    dcg = sum(1.0 / math.log2(i + 2) for i, x in enumerate(top) if x in truth)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(truth))))
    return dcg / idcg


def _dedup(ranked: Sequence) -> list:
    """A list counts an item once (its first position)."""
    seen: set = set()
    out = []
    for x in ranked:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


# Per customer of ``keep``, the distinct items bought in [t0, t1) that someone bought before t0, by
# customers who bought a product before t0, and whether the customer had bought the item before.
WINDOW_SQL = """
WITH before AS (SELECT DISTINCT customer_id, item_id FROM lines
                WHERE item_id IS NOT NULL AND epoch_us(invoice_ts) < $t0),
     during AS (SELECT DISTINCT customer_id, item_id FROM lines
                WHERE item_id IS NOT NULL AND epoch_us(invoice_ts) >= $t0 AND epoch_us(invoice_ts) < $t1)
SELECT d.customer_id, d.item_id, b.customer_id IS NOT NULL AS seen
FROM during d LEFT JOIN before b USING (customer_id, item_id)
WHERE d.customer_id IN (SELECT customer_id FROM before) AND d.item_id IN (SELECT item_id FROM before)
  AND d.customer_id IN (SELECT customer_id FROM keep)
ORDER BY 1, 2
"""
SEEN_SQL = """SELECT DISTINCT customer_id, item_id FROM lines WHERE item_id IS NOT NULL AND epoch_us(invoice_ts) < $t0
              AND customer_id IN (SELECT customer_id FROM keep) ORDER BY 1, 2"""


def _query(lines, sql: str, t0: dt.datetime, t1: dt.datetime | None, customers) -> dict[str, np.ndarray]:
    """``sql`` over the lines with ``keep``: the customers given, or every customer with a line."""
    with OrderLines(lines).connect() as con:
        if customers is None:
            con.execute("CREATE TEMP VIEW keep AS SELECT DISTINCT customer_id FROM lines")
        else:
            con.register("keep", pd.DataFrame({"customer_id": np.asarray(customers, np.int64)}))
        params = {"t0": epoch_us(t0)} | ({} if t1 is None else {"t1": epoch_us(t1)})
        return con.execute(sql, params).fetchnumpy()


def _sets(customer_ids: np.ndarray, item_ids: np.ndarray) -> dict[int, frozenset]:
    """Rows sorted by customer -> {customer: frozenset of their items}."""
    if len(customer_ids) == 0:
        return {}
    cust = np.asarray(customer_ids, np.int64)
    starts = np.flatnonzero(np.r_[True, cust[1:] != cust[:-1]])
    ends = np.r_[starts[1:], len(cust)]
    items = np.asarray(item_ids, dtype=object)
    return {int(cust[a]): frozenset(items[a:b].tolist()) for a, b in zip(starts, ends)}


def _window(lines, as_of, horizon_days: int, customers=None) -> dict[str, np.ndarray]:
    t0 = to_utc(as_of)
    return _query(lines, WINDOW_SQL, t0, t0 + dt.timedelta(days=horizon_days), customers)


def ground_truth(lines, as_of: dt.date | dt.datetime, horizon_days: int, new_only: bool = False) -> dict[int, frozenset]:
    """Per customer of the population, the set of items they bought in the window (see the module
    docstring). Customers with an empty set are left out. ``lines``: a frame, a data folder or
    :class:`~patron.training.recs.lines.OrderLines` (read by DuckDB)."""
    w = _window(lines, as_of, horizon_days)
    keep = ~np.asarray(w["seen"], bool) if new_only else slice(None)
    return _sets(w["customer_id"][keep], w["item_id"][keep])


def population(lines, as_of: dt.date | dt.datetime) -> np.ndarray:
    """Customers with a valid purchase strictly before ``as_of`` (sorted)."""
    return OrderLines(lines).before(as_of).customers()


def seen_items(lines, as_of: dt.date | dt.datetime, customers=None) -> dict[int, frozenset]:
    """Per customer (of ``customers`` if given), the items bought strictly before ``as_of``."""
    r = _query(lines, SEEN_SQL, to_utc(as_of), None, customers)
    return _sets(r["customer_id"], r["item_id"])


def lists_by_customer(recs: pd.DataFrame) -> dict[int, list]:
    """customer_id -> item ids in rank order."""
    if recs.empty:
        return {}
    r = recs.sort_values(["customer_id", "rank"], kind="stable")
    return {int(c): g.tolist() for c, g in r.groupby("customer_id", sort=False)["item_id"]}


def evaluate(recs: pd.DataFrame, truth: Truth, k: int = 20, *, exclude: Truth | None = None) -> dict:
    """Mean recall@k and NDCG@k over the customers with a non-empty truth set.

    ``exclude`` (customer -> items they must not be recommended, e.g. :func:`seen_items` for the
    discovery list) makes a list that breaks the rule an error rather than a silent score.
    """
    lists = lists_by_customer(recs)
    if exclude is not None:
        bad = [(c, x) for c, lst in lists.items() for x in lst[:k] if x in exclude.get(c, ())]
        if bad:
            raise ValueError(f"{len(bad)} recommended items were already bought by the customer, e.g. {bad[:3]}")
    recalls, ndcgs = [], []
    for c, t in truth.items():
        if not t:
            continue
        lst = lists.get(int(c), [])
        recalls.append(recall_at_k(lst, t, k))
        ndcgs.append(ndcg_at_k(lst, t, k))
    n = len(recalls)
    covered = sum(1 for c, t in truth.items() if t and lists.get(int(c)))
    return {
        f"recall@{k}": float(np.mean(recalls)) if n else 0.0,
        f"ndcg@{k}": float(np.mean(ndcgs)) if n else 0.0,
        "customers": n,
        "customers_with_list": covered,
    }


@dataclass(frozen=True)
class HoldoutTruth:
    """What one split's lists are scored against, computed once for every model scored on it."""

    truth: dict[int, frozenset]  # all items bought in the window
    truth_new: dict[int, frozenset]  # only items never bought before
    seen: dict[int, frozenset]  # what the discovery list must never name
    customers: np.ndarray  # who is scored: the population, or a sample of it


def holdout_truth(lines, as_of: dt.date | dt.datetime, horizon_days: int, customers=None) -> HoldoutTruth:
    """The truth of one split for the population before ``as_of``, or for ``customers`` (a sample of it)."""
    pop = population(lines, as_of) if customers is None else np.asarray(customers, np.int64)
    w = _window(lines, as_of, horizon_days, pop)
    new = ~np.asarray(w["seen"], bool)
    truth = _sets(w["customer_id"], w["item_id"])
    truth_new = _sets(w["customer_id"][new], w["item_id"][new])
    return HoldoutTruth(truth, truth_new, seen_items(lines, as_of, pop), pop)


def score_lists(rec: pd.DataFrame, disc: pd.DataFrame, split: HoldoutTruth, k: int = 20) -> dict:
    """Both lists of a model (``rec``: all items, ``disc``: only items never bought) scored on one
    split.

    Returns ``{"recall@k", "ndcg@k", "discovery_recall@k", "discovery_ndcg@k", "customers",
    "discovery_customers"}``.
    """
    a = evaluate(rec, split.truth, k)
    b = evaluate(disc, split.truth_new, k, exclude=split.seen)
    return {
        f"recall@{k}": a[f"recall@{k}"],
        f"ndcg@{k}": a[f"ndcg@{k}"],
        f"discovery_recall@{k}": b[f"recall@{k}"],
        f"discovery_ndcg@{k}": b[f"ndcg@{k}"],
        "customers": a["customers"],
        "discovery_customers": b["customers"],
    }


def evaluate_model(model, lines, as_of: dt.date | dt.datetime, horizon_days: int, k: int = 20,
                   customers=None) -> dict:
    """Both lists of a fitted model (its ``lists``) on one split, for the population or for the
    ``customers`` given (a sample of it): :func:`score_lists`.

    ``lines`` must include the evaluation window; the model must have been fitted on lines before
    ``as_of``.
    """
    split = holdout_truth(lines, as_of, horizon_days, customers)
    return score_lists(*model.lists(split.customers, k), split, k)
