"""Benchmark: the recommender's candidates per customer, as the catalogue grows.

Fits every candidate source on an ingested shop's lines before ``--as-of`` (not timed), then times
`Sources.candidates` over the first ``--customers`` customers, block by block as ranking does, in
one thread, both lists (repeats and discovery): milliseconds of one core per customer and list,
median of ``--runs``. The catalogue's size is what sets the cost of a customer, so run it on shops
that differ in products.

    patron synth --customers 30000 --products 50000 --days 365 --out /tmp/shop50k --gzip
    patron ingest --source /tmp/shop50k --home /tmp/home50k
    python benchmarks/candidates.py --data /tmp/home50k/data --as-of 2023-12-01 --customers 2000 --runs 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_features import machine  # noqa: E402

from patron.training.recs.lines import OrderLines  # noqa: E402
from patron.training.recs.params import RecParams  # noqa: E402
from patron.training.recs.sources import Sources  # noqa: E402
from patron.training.recs.topn import block_rows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the data folder of an ingested state directory")
    ap.add_argument("--as-of", required=True, help="YYYY-MM-DD: the sources are fitted on the lines before it")
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import numpy as np

    as_of = dt.datetime.fromisoformat(args.as_of).replace(tzinfo=dt.timezone.utc)
    t0 = time.perf_counter()
    src = Sources.build(OrderLines(args.data, end=as_of), as_of, RecParams()).warm()
    fit_s = time.perf_counter() - t0
    n = min(args.customers, src.h.n_customers)
    block = block_rows(src.h.n_items)
    per_run = []
    from threadpoolctl import threadpool_limits

    for run in range(args.runs):
        t0 = time.perf_counter()
        pairs = 0
        with threadpool_limits(1):  # one core: ranking runs one block per core
            for new_only in (False, True):
                for start in range(0, n, block):
                    pairs += len(src.candidates(np.arange(start, min(start + block, n)), new_only)["item"])
        per_run.append(time.perf_counter() - t0)
        print(f"run {run + 1} of {args.runs}: {per_run[-1]:.1f} s", file=sys.stderr)
    ms = statistics.median(per_run) / (2 * n) * 1000
    result = {
        "machine": machine(), "customers_in_shop": src.h.n_customers, "items": src.h.n_items,
        "ease_items": len(src.ease_cols), "block_rows": block, "customers_timed": n, "runs": args.runs,
        "sources_fit_s": round(fit_s, 1), "candidates_per_list": round(pairs / (2 * n), 1),
        "ms_per_customer_and_list": round(ms, 2), "runs_s": [round(s, 2) for s in per_run],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
