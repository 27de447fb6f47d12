"""Which customers a sample keeps: one rule, by id.

A customer is kept when Knuth's multiplicative hash of its id (shifted by the seed) falls below the
kept share of 2**32. Which customers a sample keeps therefore depends on the id, the seed and the
share only, never on the order of the rows or on the engine, and a larger share keeps every
customer a smaller one keeps. The rule is written here in both forms, SQL for the queries over the
order lines and NumPy for arrays of ids, and a test holds them to the same answers
(tests/test_rules.py).
"""

from __future__ import annotations

import numpy as np

_MULTIPLIER = 2654435761
_SEED_STEP = 40503
_SCALE = 2**32

# $seed and $keep are bound with :func:`sql_params`
SAMPLE_SQL = f"(((customer_id::HUGEINT + $seed * {_SEED_STEP}) * {_MULTIPLIER}) % {_SCALE}) < $keep"


def keep_threshold(fraction: float) -> int:
    """The hash values below this are kept."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"a sample keeps a share in (0, 1] of the customers, got {fraction}")
    return int(fraction * _SCALE)


def sql_params(fraction: float, seed: int = 0) -> dict[str, int]:
    """The parameters :data:`SAMPLE_SQL` is bound with."""
    return {"seed": int(seed), "keep": keep_threshold(fraction)}


def kept(customer_ids, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of the customers :data:`SAMPLE_SQL` keeps (the same arithmetic: an id shifted
    below zero gives a negative remainder in SQL, which is always kept)."""
    x = np.asarray(customer_ids, dtype=np.int64) + np.int64(seed) * _SEED_STEP
    h = (x.astype(np.uint64) * np.uint64(_MULTIPLIER)) & np.uint64(_SCALE - 1)  # mod 2**64, then mod 2**32
    return (x < 0) | (h < np.uint64(keep_threshold(fraction)))


def sample_customers(customer_ids, max_customers: int | None, seed: int = 0) -> tuple[np.ndarray, float]:
    """At most about ``max_customers`` of the distinct ids given (all of them when they are fewer),
    by the rule above: ``(kept ids, sorted; share asked for)``."""
    ids = np.unique(np.asarray(customer_ids, dtype=np.int64))
    if not max_customers or len(ids) <= max_customers:
        return ids, 1.0
    fraction = max_customers / len(ids)
    return ids[kept(ids, fraction, seed)], fraction
