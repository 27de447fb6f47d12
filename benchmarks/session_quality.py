"""Benchmark: basket completion quality of the session model against simple baselines.

Time split. The models learn from the order lines before ``as_of`` and are scored on the invoices
of the following month that hold at least two distinct items known before ``as_of`` (items first
sold later cannot be recommended by anyone and are dropped from the baskets). For each test basket,
items are hidden one at a time (at most ``--max-held-out`` per basket, a seeded sample) and ranked
given the rest, among every known item not in the context:

* ``full``: the context is every other item of the basket;
* ``short``: the context is 1 to 3 other items of the basket (seeded), as when a shopper has just
  started a basket.

HitRate@10 and MRR@10 are averaged per basket first, then over baskets, so a 700-line wholesale
order weighs as much as a three-item basket. Ranks are pessimistic on ties (an item scoring the
same as the hidden one counts as ranked above it), so a scorer cannot gain from constant scores.

Scorers, all through the same code:

* ``popular``: distinct invoices per item in the 30 days before ``as_of``;
* ``co-purchase``: shrunk cosine item-item similarity over invoices
  (:func:`patron.training.recs.sources.basket_similarity`, 100 neighbours, shrink 2), score = sum of the
  similarities to the context items, popularity breaking ties;
* ``session``: :class:`patron.training.recs.session.SessionModel`;
* ``blend``: ``a * session + (1 - a) * co-purchase``, each divided by its maximum over the query.

Hyper-parameters are chosen on the validation split only (fit before 2011-05-01, test May 2011)::

    python benchmarks/session_quality.py --data $PATRON_HOME/data --split validation --grid
    python benchmarks/session_quality.py --data $PATRON_HOME/data --split test   # once, at the end
    python benchmarks/session_quality.py --data HOME/data --as-of 2023-12-01 --end 2024-01-01  # another shop

Nothing is written; the tables go to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from patron.training.data import load_lines  # noqa: E402
from patron.training.recs.session import SessionModel, SessionParams, basket_lines  # noqa: E402
from patron.training.recs.sources import basket_similarity  # noqa: E402

COLUMNS = ("customer_id", "invoice_no", "item_id", "quantity", "unit_price", "amount", "invoice_ts", "line_class")
SPLITS = {
    "validation": (dt.datetime(2011, 5, 1, tzinfo=dt.timezone.utc), dt.datetime(2011, 6, 1, tzinfo=dt.timezone.utc)),
    "test": (dt.datetime(2011, 6, 1, tzinfo=dt.timezone.utc), dt.datetime(2011, 7, 1, tzinfo=dt.timezone.utc)),
}
K = 10
# Variants tried on the validation split (each a set of overrides of SessionParams' defaults).
GRID: list[dict] = [
    {},
    {"dim": 64, "epochs": 6},
    {"dim": 128, "epochs": 6},
    {"epochs": 8},
    {"lr": 0.003},
    {"lr": 0.03},
    {"weight_decay": 0.0},
    {"weight_decay": 1e-4},
    {"keep_min": 0.3},
    {"keep_min": 0.6},
    {"half_life_days": None},
    {"half_life_days": 30.0},
]
BLEND_ALPHAS = (0.5, 0.75)  # tried on the validation split
CHOSEN_ALPHA = 0.75  # the best of them on validation (HR@10 both contexts, MRR@10 full); used on test

Scorer = Callable[[sp.csr_matrix], np.ndarray]  # context indicator rows (query x item) -> scores


class Eval:
    """Test queries of one split over the universe of items known before ``as_of``."""

    def __init__(self, lines: pd.DataFrame, as_of: dt.datetime, end: dt.datetime, max_held_out: int, seed: int):
        self.as_of = as_of
        self.train = basket_lines(lines, as_of)
        self.items = np.sort(self.train["item_id"].unique())
        window = basket_lines(lines, end)
        window = window[window["invoice_ts"] >= as_of]
        known = np.isin(window["item_id"].to_numpy(), self.items)
        self.n_new_item_lines = int((~known).sum())  # items first sold after as_of: nobody can rank them
        test = window[known]
        rng = np.random.default_rng(seed)
        # queries: (basket id, target, context items) for both scenarios
        self.full: list[tuple[int, int, np.ndarray]] = []
        self.short: list[tuple[int, int, np.ndarray]] = []
        n_baskets = 0
        for _, g in test.groupby("invoice_no", sort=True):
            basket = np.unique(np.searchsorted(self.items, g["item_id"].to_numpy()))
            if len(basket) < 2:
                continue
            held = basket if len(basket) <= max_held_out else rng.choice(basket, max_held_out, replace=False)
            for h in np.sort(held):
                rest = basket[basket != h]
                self.full.append((n_baskets, int(h), rest))
                c = min(len(rest), int(rng.integers(1, 4)))
                self.short.append((n_baskets, int(h), np.sort(rng.choice(rest, c, replace=False))))
            n_baskets += 1
        self.n_baskets = n_baskets

    def run(self, scorer: Scorer, scenario: str, chunk: int = 2048) -> dict[str, np.ndarray]:
        """Per-basket mean HitRate@K and MRR@K of one scorer (one value per test basket)."""
        queries = self.full if scenario == "full" else self.short
        n_u = len(self.items)
        hits = np.zeros(len(queries))
        rr = np.zeros(len(queries))
        for lo in range(0, len(queries), chunk):
            qs = queries[lo:lo + chunk]
            cols = np.concatenate([c for _, _, c in qs])
            indptr = np.concatenate([[0], np.cumsum([len(c) for _, _, c in qs])])
            ctx = sp.csr_matrix((np.ones(len(cols), np.float32), cols, indptr), shape=(len(qs), n_u))
            targets = np.array([t for _, t, _ in qs])
            s = np.asarray(scorer(ctx), dtype=np.float64)
            s[np.repeat(np.arange(len(qs)), np.diff(indptr)), cols] = -np.inf
            ts = s[np.arange(len(qs)), targets]
            above = (s > ts[:, None]) | (s == ts[:, None])
            above[np.arange(len(qs)), targets] = False
            rank = 1 + above.sum(axis=1)
            hits[lo:lo + len(qs)] = rank <= K
            rr[lo:lo + len(qs)] = np.where(rank <= K, 1.0 / rank, 0.0)
        basket = np.array([b for b, _, _ in queries])
        n = np.bincount(basket)
        return {"hr": np.bincount(basket, hits) / n, "mrr": np.bincount(basket, rr) / n}


def popularity(ev: Eval, days: int = 30) -> np.ndarray:
    recent = ev.train[ev.train["invoice_ts"] >= ev.as_of - dt.timedelta(days=days)]
    counts = recent.drop_duplicates(["invoice_no", "item_id"])["item_id"].value_counts()
    pop = np.zeros(len(ev.items))
    idx = np.searchsorted(ev.items, counts.index.to_numpy())
    pop[idx] = counts.to_numpy()
    return pop


def co_purchase_matrix(ev: Eval) -> np.ndarray:
    """Co-purchase over the same baskets the session model learns from (guests' included): the
    views ``cl`` (invoice, item code) and ``pl`` (invoice) that basket_similarity reads."""
    from patron import duck

    coded = pd.DataFrame({"invoice_no": ev.train["invoice_no"].astype(str).to_numpy(),
                          "i": np.searchsorted(ev.items, ev.train["item_id"].to_numpy()).astype(np.int32)})
    with duck.connect() as con:
        con.register("cl", coded)
        con.execute("CREATE TEMP VIEW pl AS SELECT invoice_no FROM cl")
        S = basket_similarity(con, len(ev.items), neighbours=100, shrink=2.0)
    return S.toarray().astype(np.float32)


def session_scorer(model: SessionModel, ev: Eval) -> Scorer:
    """Full-universe probabilities from the saved arrays (the same numpy arithmetic as ``scores``,
    batched); items the model does not know get probability 0."""
    assert model.in_emb is not None and model.out_emb is not None and model.out_bias is not None
    in_emb, out_emb, out_bias = model.in_emb, model.out_emb, model.out_bias
    pos = np.searchsorted(model.item_ids, ev.items)
    pos = np.clip(pos, 0, len(model.item_ids) - 1)
    in_model = model.item_ids[pos] == ev.items
    E = np.zeros((len(ev.items), model.params.dim), np.float32)
    E[in_model] = in_emb[pos[in_model]]

    def score(ctx: sp.csr_matrix) -> np.ndarray:
        known = ctx @ sp.diags(in_model.astype(np.float32))  # the model ignores items it lacks
        n = np.asarray(known.sum(axis=1)).ravel()
        c = (known @ E) / np.where(n > 0, n, 1.0)[:, None]
        logits = c @ out_emb.T + out_bias
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        out = np.zeros((ctx.shape[0], len(ev.items)))
        out[:, in_model] = p[:, pos[in_model]]
        out[n == 0] = 0.0
        return out

    return score


def blend(a: Scorer, b: Scorer, alpha: float) -> Scorer:
    def score(ctx: sp.csr_matrix) -> np.ndarray:
        sa, sb = a(ctx), b(ctx)
        sa = sa / np.maximum(sa.max(axis=1, keepdims=True), 1e-12)
        sb = sb / np.maximum(sb.max(axis=1, keepdims=True), 1e-12)
        return alpha * sa + (1 - alpha) * sb

    return score


def latency(model: SessionModel, ev: Eval, n: int = 2000, size: int = 5, seed: int = 0) -> tuple[float, float]:
    """Median and 99th percentile wall time of one ``recommend`` call, in milliseconds."""
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(n):
        basket = [str(x) for x in rng.choice(model.item_ids, size, replace=False)]
        t0 = time.perf_counter()
        model.recommend(basket, k=K)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.99 * len(times)) - 1]


Result = dict[str, dict[str, np.ndarray]]  # scenario -> metric -> value per test basket


def fmt_row(name: str, res: Result) -> str:
    return " ".join([f"{name:<28}"] + [f"{res[sc][m].mean():>8.4f}" for sc in ("full", "short") for m in ("hr", "mrr")])


def fmt_diff(name: str, res: Result, ref: Result, n_boot: int, seed: int) -> str:
    """Mean difference per basket against ``ref`` with a paired bootstrap 95% interval (resampling
    test baskets), so that a gap can be told from noise."""
    rng = np.random.default_rng(seed)
    out = [f"{name:<28}"]
    for sc in ("full", "short"):
        n = len(res[sc]["hr"])
        idx = rng.integers(0, n, size=(n_boot, n))
        for m in ("hr", "mrr"):
            d = res[sc][m] - ref[sc][m]
            lo, hi = np.quantile(d[idx].mean(axis=1), [0.025, 0.975])
            out.append(f"{d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]")
    return " ".join(out)


def header() -> str:
    return f"{'scorer':<28} {'HR@10':>8} {'MRR@10':>8} {'HR@10':>8} {'MRR@10':>8}\n{'':<28} {'full context':>17} {'short context':>17}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_data = Path(os.environ.get("PATRON_HOME", REPO / ".patron")) / "data"
    ap.add_argument("--data", type=Path, default=default_data, help="state data directory (canonical order lines)")
    ap.add_argument("--split", choices=sorted(SPLITS), default="validation")
    ap.add_argument("--grid", action="store_true", help="try the variants of GRID (validation split only)")
    ap.add_argument("--params", default="{}", help="JSON overrides of SessionParams, or a list of them to compare")
    ap.add_argument("--alpha", type=float, default=None,
                    help=f"blend weight of the session model (default: {BLEND_ALPHAS} on validation, {CHOSEN_ALPHA} on test)")
    ap.add_argument("--as-of", type=dt.date.fromisoformat, help="another split: fit before this day (with --end)")
    ap.add_argument("--end", type=dt.date.fromisoformat, help="another split: test from --as-of up to this day")
    ap.add_argument("--max-held-out", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples for the confidence intervals (0: none)")
    args = ap.parse_args()
    if args.grid and args.split != "validation":
        ap.error("--grid tunes hyper-parameters and runs on the validation split only")

    import torch

    torch.set_num_threads(1)
    as_of, end = SPLITS[args.split]
    if (args.as_of is None) != (args.end is None):
        ap.error("--as-of and --end go together")
    if args.as_of is not None:  # another shop's split (a synthetic one, say): the defaults are not tuned on it
        if args.grid:
            ap.error("--grid tunes on the shipped shop's validation split only")
        as_of, end = (dt.datetime.combine(d, dt.time(), dt.timezone.utc) for d in (args.as_of, args.end))
    lines = load_lines(args.data, valid_only=False, columns=COLUMNS)
    ev = Eval(lines, as_of, end, args.max_held_out, args.seed)
    print(f"split {args.split if args.as_of is None else 'given'}: fit before {as_of.date()}, test [{as_of.date()}, {end.date()}): "
          f"{ev.n_baskets} baskets, {len(ev.full)} queries, {len(ev.items)} known items, "
          f"{ev.n_new_item_lines} test lines of items new after {as_of.date()} dropped")

    pop = popularity(ev)
    t0 = time.perf_counter()
    S = co_purchase_matrix(ev)
    cop_seconds = time.perf_counter() - t0
    tie = 1e-6 * pop / max(pop.max(), 1.0)

    def pop_scorer(ctx: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(pop, ctx.shape).copy()

    def cop_scorer(ctx: sp.csr_matrix) -> np.ndarray:
        return ctx @ S + tie

    def evaluate(scorer: Scorer) -> Result:
        return {sc: ev.run(scorer, sc) for sc in ("full", "short")}

    base = {"popular (30 days)": evaluate(pop_scorer), "co-purchase (cosine)": evaluate(cop_scorer)}
    print(f"co-purchase fitted in {cop_seconds:.1f} s")
    print(header())
    for name, result in base.items():
        print(fmt_row(name, result), flush=True)

    overrides = json.loads(args.params)
    if isinstance(overrides, list):
        if args.split != "validation":
            ap.error("comparing variants is tuning: validation split only")
        variants = overrides
    else:
        variants = [{**overrides, **g} for g in GRID] if args.grid else [overrides]
    for v in variants:
        params = SessionParams(**{**asdict(SessionParams()), "seed": args.seed, **v})
        t0 = time.perf_counter()
        model = SessionModel(params).fit(lines, as_of)
        fit_s = time.perf_counter() - t0
        sess = session_scorer(model, ev)
        name = "session " + (json.dumps(v, sort_keys=True) if v else "(defaults)")
        res: dict[str, Result] = {name: evaluate(sess)}
        print(fmt_row(name[:28], res[name]) + f"   fit {fit_s:.1f} s", flush=True)
        if len(name) > 28:
            print(f"  {name}")
        if args.alpha is not None:
            alphas: tuple[float, ...] = (args.alpha,)
        else:
            alphas = BLEND_ALPHAS if args.split == "validation" else (CHOSEN_ALPHA,)
        for a in alphas:
            bname = f"  blend a={a:.2f}"
            res[bname] = evaluate(blend(sess, cop_scorer, a))
            print(fmt_row(bname, res[bname]), flush=True)
        if args.bootstrap:
            print("  minus co-purchase, mean [95% CI]: HR@10 full, MRR@10 full, HR@10 short, MRR@10 short")
            for rname, r in res.items():
                print("  " + fmt_diff(rname.strip()[:26], r, base["co-purchase (cosine)"], args.bootstrap, args.seed))
        med, p99 = latency(model, ev)
        print(f"  recommend() latency, basket of 5 over {len(model.item_ids)} items: median {med:.3f} ms, p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()
