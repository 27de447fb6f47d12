"""Benchmark: what one service worker holds of its own, by the line that allocated it.

Loads the champions of a trained state directory as a service worker does (serving.runtime),
answers a few hundred `/recommend` and profile requests through the same logic, then prints the
process's resident memory split into file-backed pages (the memory-mapped model arrays, shared
by every worker on the host) and the worker's own (anonymous) memory, and the largest live
allocations by source line (tracemalloc: NumPy, pandas and Python objects).

    python benchmarks/worker_memory.py HOME [--requests 300] [--top 12]
"""

from __future__ import annotations

import argparse
import os
import sys
import tracemalloc
from pathlib import Path


def smaps_mib() -> dict[str, float]:
    """Resident memory of this process: all, file-backed and anonymous (MiB), from the kernel."""
    out = {"rss": 0.0, "file": 0.0, "anon": 0.0}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            kib = float(rest.split()[0]) if rest.strip() and rest.split()[0].isdigit() else 0.0
            if key == "Rss":
                out["rss"] = kib / 1024
            elif key == "Anonymous":
                out["anon"] = kib / 1024
    out["file"] = out["rss"] - out["anon"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("home", type=Path)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    os.environ["PATRON_HOME"] = str(args.home.resolve())

    import numpy as np

    from patron.serving import logic
    from patron.serving import schemas as S
    from patron.serving.runtime import Runtime
    from patron.settings import PatronSettings

    before = smaps_mib()
    tracemalloc.start(1)
    rt = Runtime(PatronSettings())
    ok, message, _, _ = rt.reload()
    if not ok:
        sys.exit(f"the champions did not load: {message}")
    loaded = smaps_mib()
    champions = rt.require()
    ids = champions.recs.sources.h.customers
    rng = np.random.default_rng(0)
    for c in rng.choice(ids, min(args.requests, len(ids)), replace=False).tolist():
        logic.recommend(rt, S.RecommendRequest(customer_id=int(c), k=20))
        logic.recommend(rt, S.RecommendRequest(customer_id=int(c), k=20, exclude_purchased=True))
        logic.customer(rt, S.CustomerRequest(customer_id=int(c)))
    served = smaps_mib()
    snapshot = tracemalloc.take_snapshot()
    stats = snapshot.statistics("lineno")
    traced = sum(s.size for s in stats) / 2**20
    print(f"customers {len(ids):,}, items {champions.recs.sources.h.n_items:,}")
    print("MiB              resident  file-backed  own (anonymous)")
    for name, m in (("after imports", before), ("champions loaded", loaded), (f"{args.requests} customers served", served)):
        print(f"{name:<18} {m['rss']:>8.0f} {m['file']:>12.0f} {m['anon']:>16.0f}")
    print(f"live allocations traced: {traced:.0f} MiB; the largest, by line:")
    for s in stats[: args.top]:
        frame = s.traceback[0]
        print(f"  {s.size / 2**20:8.1f} MiB  {frame.filename.split('site-packages/')[-1].split('/work/main/')[-1]}:{frame.lineno}")


if __name__ == "__main__":
    main()
