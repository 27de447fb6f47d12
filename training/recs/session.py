"""Basket completion for anonymous shoppers: given the items in a basket, rank the items to add next.

The storefront knows nothing about a guest but the basket, so the model learns from baskets alone
(invoices of known customers and of guests alike). It is a small neural bag-of-items model:

* every item has an input embedding ``E[i]`` and an output embedding ``W[i]`` with a bias ``b[i]``;
* the basket context is the mean of the input embeddings of the items in the basket;
* ``p(item | basket) = softmax(W @ context + b)`` over every known item (a full softmax: with a few
  thousand products it is cheap and needs no negative sampling, whose bias would have to be undone).

Training examples are "the basket minus one item -> that item", taken from invoices with at least
two distinct items before ``as_of``; each epoch sees every basket once, with up to ``max_targets``
of its items held out in turn. Recent baskets weigh more (a gift shop's assortment follows the
seasons). Context dropout (``keep_min`` < 1) is available but off by default: on the validation
month it did not help, not even for baskets of one to three items. PyTorch fits the weights with
Adam; serving is plain numpy on the saved arrays and does not import torch.

Saved as data only: ``session.json`` (format name and version, parameters, ``as_of``, item ids,
training summary) and ``session.npz`` (float32 arrays, loaded with ``allow_pickle=False``). A
directory written by another format version is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd

from patron.errors import NotFittedError, PatronError
from patron.rules import PRODUCT_SALE_SQL, product_sale
from patron.times import utc_timestamp
from patron.training.formats import check_format

log = logging.getLogger(__name__)

FORMAT_NAME = "patron-session"
FORMAT_VERSION = 1
META_FILE = "session.json"
ARRAYS_FILE = "session.npz"
_ARRAY_NAMES = ("in_emb", "out_emb", "out_bias")


class SessionFormatError(PatronError, ValueError):
    """A saved session model of another format or format version than this code reads, or damaged."""


@dataclass(frozen=True)
class SessionParams:
    """Hyper-parameters. The defaults were chosen on a validation month of the shipped shop
    (fit before 2011-05-01, scored on May 2011); see ``benchmarks/session_quality.py``."""

    dim: int = 96
    epochs: int = 5  # more epochs over-fit: the validation month got worse from 6 on
    lr: float = 0.01
    weight_decay: float = 1e-5  # L2 on all weights (Adam): keeps rare items' embeddings small
    batch_targets: int = 1024  # held-out items per optimisation step
    max_basket: int = 64  # items sampled per basket and epoch; bulk orders of 700 lines add no signal
    max_targets: int = 24  # held-out items per basket and epoch, so big baskets do not dominate
    # held-out items x catalogue items per epoch (each held-out item is scored against the whole
    # catalogue: an epoch costs about 15 s per 1e9 on two cores). Above it, each epoch trains on a
    # sample of the baskets, recent ones more likely, weighted so that the loss stays the one over
    # all baskets. The shipped shop needs at most 0.75e9 (as of its last day): it is never sampled.
    max_epoch_cells: int = 800_000_000
    keep_min: float = 1.0  # each basket keeps a uniform fraction in [keep_min, 1] of its context
    half_life_days: float | None = 60.0  # recency weight of a basket; None weighs all alike
    init_scale: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "dim": self.dim >= 1,
            "epochs": self.epochs >= 1,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "batch_targets": self.batch_targets >= 1,
            "max_basket": self.max_basket >= 2,
            "max_targets": self.max_targets >= 1,
            "max_epoch_cells": self.max_epoch_cells >= 1,
            "keep_min": 0.0 <= self.keep_min <= 1.0,
            "half_life_days": self.half_life_days is None or self.half_life_days > 0,
            "init_scale": self.init_scale > 0,
        }
        bad = [f"{name}={getattr(self, name)!r}" for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid session model parameters: {', '.join(bad)}")


def basket_lines(lines: pd.DataFrame, as_of: dt.date | dt.datetime | pd.Timestamp | str) -> pd.DataFrame:
    """The purchase lines before ``as_of`` that can form baskets: product sales to known customers
    and guests, positive quantity, a product id."""
    missing = [c for c in ("invoice_no", "item_id", "quantity", "invoice_ts", "line_class") if c not in lines.columns]
    if missing:
        raise ValueError(f"order lines need the columns {missing}; got {list(lines.columns)}")
    t = utc_timestamp(as_of)
    ts = pd.to_datetime(lines["invoice_ts"], utc=True)  # naive times are UTC, like everywhere else
    keep = product_sale(lines["line_class"], lines["item_id"], lines["quantity"]) & (ts < t).to_numpy()
    return pd.DataFrame({
        "invoice_no": lines["invoice_no"].to_numpy()[keep].astype(str),
        "item_id": lines["item_id"].to_numpy()[keep].astype(str),
        "invoice_ts": ts[keep].reset_index(drop=True),
    })


BASKET_COLUMNS = ("invoice_no", "item_id", "quantity", "invoice_ts", "line_class")

# product sales before $t, one row per distinct (invoice, item), of the invoices with two or more
# distinct items; each basket dated by its first line. The vocabulary: the items of those baskets,
# coded in sorted order.
BASKETS_SQL = """
WITH l AS (
    SELECT invoice_no::VARCHAR AS inv, item_id::VARCHAR AS item, min(invoice_ts) AS ts
    FROM {lines} WHERE {sale} AND invoice_ts < $t
    GROUP BY ALL
), b AS (
    SELECT inv, min(ts) AS bts FROM l GROUP BY inv HAVING count(*) >= 2
)
SELECT l.inv, l.item, b.bts FROM l JOIN b USING (inv)
"""
VOCABULARY_SQL = "SELECT item, (row_number() OVER (ORDER BY item) - 1)::BIGINT AS code FROM (SELECT DISTINCT item FROM bl)"


@dataclass
class Baskets:
    """Distinct items per invoice as a CSR structure over a sorted item index."""

    items: np.ndarray  # str, sorted: the vocabulary
    indptr: np.ndarray  # int64, len = n_baskets + 1
    indices: np.ndarray  # int64 item indices, per basket
    age_days: np.ndarray  # float64, days between the invoice and as_of

    @classmethod
    def build(cls, lines: "pd.DataFrame | Path", as_of: dt.date | dt.datetime | pd.Timestamp | str) -> "Baskets":
        """Baskets with at least two distinct items, from order lines in memory or from the committed
        lines of a data folder (read by DuckDB: no frame of the lines is built). Items that never
        shared a basket with another item are left out of the vocabulary: nothing could be learned
        about them. Baskets come in time order, then by invoice number, so that the same lines
        always give the same baskets."""
        from patron import duck

        t = utc_timestamp(as_of)
        limit = duck.memory_limit()  # all basket lines are sorted: past the limit, DuckDB spills to disk
        with duck.connect(memory_limit=limit) as con, duck.within_memory("reading the baskets for the session model", limit):
            if isinstance(lines, pd.DataFrame):
                missing = [c for c in BASKET_COLUMNS if c not in lines.columns]
                if missing:
                    raise ValueError(f"order lines need the columns {missing}; got {list(lines.columns)}")
                con.register("given_lines", lines[list(BASKET_COLUMNS)])
                source = "given_lines"
            else:
                from patron.features.ingest import OrderStore

                source = OrderStore(Path(lines)).scan()
                if source is None:
                    raise ValueError(f"no order lines under {lines}: run `patron ingest` first")
            con.execute(f"CREATE TEMP TABLE bl AS {BASKETS_SQL.format(lines=source, sale=PRODUCT_SALE_SQL)}",
                        {"t": t.to_pydatetime()})
            con.execute(f"CREATE TEMP TABLE vocabulary AS {VOCABULARY_SQL}")
            items = con.execute("SELECT item FROM vocabulary ORDER BY code").fetchnumpy()["item"]
            codes = con.execute("SELECT v.code FROM bl JOIN vocabulary v USING (item) ORDER BY bl.bts, bl.inv, bl.item"
                                ).fetchnumpy()["code"]
            per = con.execute("SELECT epoch_us(bts) AS us, count(*) AS n FROM bl GROUP BY inv, bts ORDER BY bts, inv"
                              ).fetchnumpy()
        if len(codes) == 0:
            return cls(np.array([], dtype=str), np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0))
        indptr = np.concatenate([[0], np.cumsum(per["n"])]).astype(np.int64)
        t_us = (t - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
        age = (t_us - per["us"].astype(np.int64)) / 1e6 / 86_400.0
        return cls(np.asarray(items, dtype=str), indptr, np.asarray(codes, np.int64), age)

    @property
    def n_baskets(self) -> int:
        return len(self.indptr) - 1


class SessionModel:
    """Basket completion model: ``fit`` with PyTorch, ``recommend`` with numpy.

    ::

        model = SessionModel(dim=64).fit(lines, as_of)
        model.recommend(["85123A", "71053"], k=10)   # [(item_id, probability), ...]
        model.save(directory); same = SessionModel.load(directory)
    """

    def __init__(self, params: SessionParams | None = None, **overrides: Any) -> None:
        base = asdict(params) if params is not None else {}
        self.params = SessionParams(**{**base, **overrides})
        self.as_of: pd.Timestamp | None = None
        self.item_ids: np.ndarray = np.array([], dtype=str)
        self._index: dict[str, int] = {}
        self.in_emb: np.ndarray | None = None
        self.out_emb: np.ndarray | None = None
        self.out_bias: np.ndarray | None = None
        self.summary: dict[str, Any] = {}

    # ---- training
    def fit(self, lines: "pd.DataFrame | Path", as_of: dt.date | dt.datetime | pd.Timestamp | str) -> Self:
        """Learn from the baskets of ``lines`` (order lines, or a data folder's committed lines)
        strictly before ``as_of`` (later lines are ignored, so a backtest cannot see its own future)."""
        import torch  # training only: serving a saved model must not need torch
        import torch.nn.functional as F

        p = self.params
        t0 = time.perf_counter()
        self.as_of = utc_timestamp(as_of)
        data = Baskets.build(lines, self.as_of)
        if data.n_baskets == 0:
            raise ValueError(f"no basket with two or more distinct items before {self.as_of.isoformat()}")
        n_items = len(data.items)
        rng = np.random.default_rng(p.seed)
        gen = torch.Generator().manual_seed(p.seed)
        E = (torch.randn(n_items, p.dim, generator=gen) * p.init_scale).requires_grad_()
        W = (torch.randn(n_items, p.dim, generator=gen) * p.init_scale).requires_grad_()
        b = torch.zeros(n_items, requires_grad=True)
        opt = torch.optim.Adam([E, W, b], lr=p.lr, weight_decay=p.weight_decay)
        if p.half_life_days is None:
            weight = np.ones(data.n_baskets)
        else:
            weight = 0.5 ** (data.age_days / p.half_life_days)
        weight = weight / weight.mean()

        losses: list[float] = []
        n_examples = 0
        targets = np.minimum(np.minimum(np.diff(data.indptr), p.max_basket), p.max_targets)
        budget = max(1, p.max_epoch_cells // n_items)  # held-out items per epoch
        for epoch in range(p.epochs):
            total, total_w = 0.0, 0.0
            chosen, w_epoch = epoch_sample(targets, weight, budget, rng)
            if chosen is not None:
                log.info("session model epoch %d/%d: %d of %d baskets sampled (about %d held-out items)",
                         epoch + 1, p.epochs, len(chosen), data.n_baskets, budget)
            for batch in _epoch_batches(data, w_epoch, p, rng, chosen):
                bag, offsets, counts, tb, target, kept, w = (torch.from_numpy(a) for a in batch)
                S = F.embedding_bag(bag, E, offsets, mode="sum")
                # leave-one-out context: the basket's sum minus the target if it was in the context
                ctx = (S[tb] - kept.unsqueeze(1) * E[target]) / (counts[tb] - kept).unsqueeze(1)
                logits = ctx @ W.T + b
                loss_each = F.cross_entropy(logits, target, reduction="none")
                loss = (loss_each * w).sum() / w.sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                w_sum = float(w.sum())
                total += loss.item() * w_sum
                total_w += w_sum
                if epoch == 0:
                    n_examples += len(target)
            losses.append(total / max(total_w, 1e-12))
            log.info("session model epoch %d/%d: loss %.4f", epoch + 1, p.epochs, losses[-1])

        self.item_ids = data.items
        self._index = {item: i for i, item in enumerate(self.item_ids)}
        self.in_emb = E.detach().numpy().astype(np.float32, copy=True)
        self.out_emb = W.detach().numpy().astype(np.float32, copy=True)
        self.out_bias = b.detach().numpy().astype(np.float32, copy=True)
        self.summary = {
            "n_baskets": int(data.n_baskets),
            "n_items": int(n_items),
            "examples_per_epoch": int(n_examples),
            "epoch_loss": [round(x, 6) for x in losses],
            "fit_seconds": round(time.perf_counter() - t0, 3),
        }
        log.info("session model fitted on %d baskets, %d items in %.1f s", data.n_baskets, n_items,
                 self.summary["fit_seconds"])
        return self

    # ---- serving
    def _check_fitted(self) -> None:
        if self.in_emb is None:
            raise NotFittedError("SessionModel is not fitted: call fit() or SessionModel.load() first")

    def _known(self, items: list[str]) -> list[int]:
        """Indices of the distinct known items of a basket, in basket order (unknown ids ignored)."""
        self._check_fitted()
        out: list[int] = []
        seen: set[int] = set()
        for item in items:
            i = self._index.get(str(item))
            if i is not None and i not in seen:
                seen.add(i)
                out.append(i)
        return out

    def scores(self, items: list[str]) -> np.ndarray | None:
        """``p(item | basket)`` for every item of ``item_ids`` (basket items included), or None when
        no item of the basket is known. Exposed for blending with other scorers."""
        idx = self._known(items)
        if not idx:
            return None
        assert self.in_emb is not None and self.out_emb is not None and self.out_bias is not None
        ctx = self.in_emb[idx].mean(axis=0)
        logits = self.out_emb @ ctx + self.out_bias
        logits -= logits.max()
        prob = np.exp(logits)
        prob /= prob.sum()
        return prob

    def recommend(self, items: list[str], k: int = 10, exclude: set[str] | None = None) -> list[tuple[str, float]]:
        """Up to ``k`` items to add to the basket, best first, with their probability under the model.

        Items of the basket and of ``exclude`` are never returned. Unknown item ids are ignored; a
        basket without any known item gets ``[]`` (the caller decides on a fallback, such as the
        popular items, which this model does not know about on its own)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        prob = self.scores(items)
        if prob is None:
            return []
        prob = prob.copy()
        banned = self._known(items)
        if exclude:
            banned += [i for i in (self._index.get(str(x)) for x in exclude) if i is not None]
        prob[banned] = -np.inf
        n_ok = len(prob) - len(set(banned))
        k = min(k, n_ok)
        if k <= 0:
            return []
        top = np.argpartition(-prob, k - 1)[:k]
        # ties (equal probabilities) go to the smaller item id, so results do not depend on argpartition
        top = top[np.lexsort((top, -prob[top]))]
        return [(str(self.item_ids[i]), float(prob[i])) for i in top]

    # ---- persistence
    def save(self, directory: Path | str) -> Path:
        """Write ``session.json`` and ``session.npz`` into ``directory`` (created if needed)."""
        self._check_fitted()
        assert self.as_of is not None and self.in_emb is not None
        assert self.out_emb is not None and self.out_bias is not None
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / ARRAYS_FILE, in_emb=self.in_emb, out_emb=self.out_emb, out_bias=self.out_bias)
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "params": asdict(self.params),
            "as_of": self.as_of.isoformat(),
            "item_ids": [str(x) for x in self.item_ids],
            "summary": self.summary,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: Path | str) -> Self:
        """Read a saved model; refuses another format or format version instead of serving nonsense."""
        directory = Path(directory)
        meta_path, arrays_path = directory / META_FILE, directory / ARRAYS_FILE
        if not meta_path.is_file() or not arrays_path.is_file():
            raise FileNotFoundError(f"{directory} is not a saved session model: expected {META_FILE} and {ARRAYS_FILE}")
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise SessionFormatError(f"{meta_path}: unreadable JSON ({exc})") from exc
        check_format(meta, directory, FORMAT_NAME, FORMAT_VERSION, SessionFormatError)
        known_params = {f.name for f in fields(SessionParams)}
        params = SessionParams(**{k: v for k, v in meta["params"].items() if k in known_params})
        with np.load(arrays_path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in _ARRAY_NAMES if name in z.files}
        missing = [n for n in _ARRAY_NAMES if n not in arrays]
        if missing:
            raise SessionFormatError(f"{arrays_path}: missing arrays {missing}")
        item_ids = np.array(meta["item_ids"], dtype=str)
        n, d = len(item_ids), params.dim
        expected = {"in_emb": (n, d), "out_emb": (n, d), "out_bias": (n,)}
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise SessionFormatError(f"{arrays_path}: array {name} has shape {arrays[name].shape}, expected {shape}")
        model = cls(params)
        model.as_of = pd.Timestamp(meta["as_of"])
        model.item_ids = item_ids
        model._index = {item: i for i, item in enumerate(item_ids)}
        model.in_emb = arrays["in_emb"].astype(np.float32, copy=False)
        model.out_emb = arrays["out_emb"].astype(np.float32, copy=False)
        model.out_bias = arrays["out_bias"].astype(np.float32, copy=False)
        model.summary = dict(meta.get("summary", {}))
        return model


def epoch_sample(targets: np.ndarray, weight: np.ndarray, budget: int,
                 rng: np.random.Generator) -> tuple[np.ndarray | None, np.ndarray]:
    """The baskets of one epoch and their loss weights: all of them (``None``, weights unchanged,
    no draw) when their held-out items fit the budget; otherwise each basket independently with
    probability ``min(1, c * weight)``, ``c`` set so that the expected held-out items meet the
    budget, and weighted by ``weight / probability`` so that the expected loss is the loss over
    all baskets (Horvitz-Thompson)."""
    if targets.sum() <= budget:
        return None, weight
    lo, hi = 0.0, 1.0
    while (np.minimum(1.0, hi * weight) * targets).sum() < budget:
        hi *= 2.0
    for _ in range(50):  # bisection on c: the expected held-out items grow with it
        mid = 0.5 * (lo + hi)
        if (np.minimum(1.0, mid * weight) * targets).sum() < budget:
            lo = mid
        else:
            hi = mid
    prob = np.minimum(1.0, hi * weight)
    chosen = np.flatnonzero(rng.random(len(weight)) < prob)
    w = np.zeros_like(weight)
    w[chosen] = weight[chosen] / prob[chosen]
    return chosen, w


def _epoch_batches(data: Baskets, weight: np.ndarray, p: SessionParams, rng: np.random.Generator,
                   chosen: np.ndarray | None = None):
    """One epoch of training batches (over the ``chosen`` baskets, default all), as numpy arrays
    ready for torch.

    Each basket contributes a random subset of its items as context ("kept") and up to
    ``max_targets`` held-out items; a target's context is the kept items other than itself, and at
    least two items are kept so that every target has a non-empty context.
    """
    bag: list[np.ndarray] = []
    counts: list[int] = []
    tbs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    kepts: list[np.ndarray] = []
    ws: list[np.ndarray] = []
    n_targets = 0
    for bi in rng.permutation(data.n_baskets if chosen is None else chosen):
        its = data.indices[data.indptr[bi]:data.indptr[bi + 1]]
        if len(its) > p.max_basket:
            its = rng.choice(its, p.max_basket, replace=False)
        n = len(its)
        keep = rng.random(n) < rng.uniform(p.keep_min, 1.0)
        if keep.sum() < 2:
            keep[rng.choice(n, 2, replace=False)] = True
        tpos = np.arange(n) if n <= p.max_targets else rng.choice(n, p.max_targets, replace=False)
        j = len(counts)
        bag.append(its[keep])
        counts.append(int(keep.sum()))
        tbs.append(np.full(len(tpos), j))
        targets.append(its[tpos])
        kepts.append(keep[tpos])
        ws.append(np.full(len(tpos), weight[bi]))
        n_targets += len(tpos)
        if n_targets >= p.batch_targets:
            yield _pack(bag, counts, tbs, targets, kepts, ws)
            bag, counts, tbs, targets, kepts, ws = [], [], [], [], [], []
            n_targets = 0
    if counts:
        yield _pack(bag, counts, tbs, targets, kepts, ws)


def _pack(bag, counts, tbs, targets, kepts, ws) -> tuple[np.ndarray, ...]:
    sizes = np.array([len(x) for x in bag], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return (
        np.concatenate(bag).astype(np.int64),
        offsets,
        np.array(counts, dtype=np.float32),
        np.concatenate(tbs).astype(np.int64),
        np.concatenate(targets).astype(np.int64),
        np.concatenate(kepts).astype(np.float32),
        np.concatenate(ws).astype(np.float32),
    )
