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
from patron.training.recs.history import lines_before

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


def split_window(lines: pd.DataFrame, as_of: dt.date | dt.datetime, horizon_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(lines before as_of, lines in [as_of, as_of + horizon))."""
    t0 = to_utc(as_of)
    t1 = t0 + dt.timedelta(days=horizon_days)
    lines = lines[lines["item_id"].notna()]  # a line without a product cannot be recommended
    ts = lines["invoice_ts"]
    return lines[ts < t0], lines[(ts >= t0) & (ts < t1)]


def ground_truth(lines: pd.DataFrame, as_of: dt.date | dt.datetime, horizon_days: int, new_only: bool = False) -> dict[int, frozenset]:
    """Per customer of the population, the set of items they bought in the window (see the module
    docstring). Customers with an empty set are left out."""
    before, window = split_window(lines, as_of, horizon_days)
    population = set(before["customer_id"].unique().tolist())
    existing = set(before["item_id"].unique().tolist())
    w = window[window["customer_id"].isin(population) & window["item_id"].isin(existing)]
    w = w[["customer_id", "item_id"]].drop_duplicates()
    if new_only:
        seen = before[["customer_id", "item_id"]].drop_duplicates()
        w = w.merge(seen, on=["customer_id", "item_id"], how="left", indicator=True)
        w = w[w["_merge"] == "left_only"].drop(columns="_merge")
    return {int(c): frozenset(g.tolist()) for c, g in w.groupby("customer_id")["item_id"]}


def population(lines: pd.DataFrame, as_of: dt.date | dt.datetime) -> np.ndarray:
    """Customers with a valid purchase strictly before ``as_of`` (sorted)."""
    return np.sort(lines_before(lines, to_utc(as_of))["customer_id"].unique())


def seen_items(lines: pd.DataFrame, as_of: dt.date | dt.datetime, customers=None) -> dict[int, frozenset]:
    """Per customer (of ``customers`` if given), the items bought strictly before ``as_of``."""
    before = lines[(lines["invoice_ts"] < to_utc(as_of)) & lines["item_id"].notna()][["customer_id", "item_id"]]
    if customers is not None:
        before = before[before["customer_id"].isin(np.asarray(customers))]
    before = before.drop_duplicates()
    return {int(c): frozenset(g.tolist()) for c, g in before.groupby("customer_id")["item_id"]}


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


def holdout_truth(lines: pd.DataFrame, as_of: dt.date | dt.datetime, horizon_days: int, customers=None) -> HoldoutTruth:
    """The truth of one split for the population before ``as_of``, or for ``customers`` (a sample of it)."""
    pop = population(lines, as_of) if customers is None else np.asarray(customers, np.int64)
    keep = set(pop.tolist())
    truth = {c: t for c, t in ground_truth(lines, as_of, horizon_days).items() if c in keep}
    truth_new = {c: t for c, t in ground_truth(lines, as_of, horizon_days, new_only=True).items() if c in keep}
    return HoldoutTruth(truth, truth_new, seen_items(lines, as_of, None if customers is None else pop), pop)


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


def evaluate_model(model, lines: pd.DataFrame, as_of: dt.date | dt.datetime, horizon_days: int, k: int = 20,
                   customers=None) -> dict:
    """Both lists of a fitted model (its ``lists``) on one split, for the population or for the
    ``customers`` given (a sample of it): :func:`score_lists`.

    ``lines`` must include the evaluation window; the model must have been fitted on lines before
    ``as_of``.
    """
    split = holdout_truth(lines, as_of, horizon_days, customers)
    return score_lists(*model.lists(split.customers, k), split, k)
