"""Benchmark: the whole batch path and the service on a synthetic shop of a given size.

`patron pipeline run`, then `patron export`, as a user runs them, on a fresh state directory: wall
time and peak resident memory of each pipeline step (from the run's report: the process's own
high-water mark, reset at each step) and of each command (the kernel's figure for that child, from
wait4, not sampled). Then the service on the trained
state: time from start to ready, resident memory of the server's processes once warm, and
`/recommend` latency at 8 keep-alive connections (benchmarks/loadgen.py).

    python benchmarks/scale.py --size M            # 100,000 customers, 10,000 products, 365 days
    python benchmarks/scale.py --size L --runs 1   # 1,000,000 customers, 50,000 products
    python benchmarks/scale.py --customers 20000 --products 2000 --days 365 --raw /tmp/shop
    python benchmarks/scale.py --service-only HOME  # the service alone, on a state already trained

The shop is written once per size (`patron synth`, seed 0) and kept in --raw for the next runs.
Results print as JSON and as the Markdown table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_features import machine, patron, run_step  # noqa: E402

SIZES = {"S": (10_000, 2_000, 365), "M": (100_000, 10_000, 365), "L": (1_000_000, 50_000, 365)}
HORIZON = 90
SYNTH_START = dt.date(2023, 1, 2)  # `patron synth`'s first day


def batch_run(raw: Path, home: Path, as_of: str) -> dict[str, tuple[float, float]]:
    """`patron pipeline run`, then `patron export`, each a command of its own on a fresh state
    directory: each pipeline step's wall time and own peak memory from the run's report
    (patron.meter), the commands' wall time and peak from the kernel (wait4)."""
    shutil.rmtree(home, ignore_errors=True)
    h = ["--home", str(home)]
    wall, peak, _ = run_step([patron(), "pipeline", "run", "--source", str(raw), "--as-of", as_of,
                              "--horizon-days", str(HORIZON), *h])
    (report,) = sorted((home / "reports").glob("pipeline-*.json"))
    out = {name: (m["seconds"], m["peak_mib"]) for name, m in json.loads(report.read_text())["measured"].items()}
    out["start-up and the rest"] = (wall - sum(w for w, _ in out.values()), peak)  # imports, registry, journal
    out["export"] = run_step([patron(), "export", "--as-of", as_of, "--horizon-days", str(HORIZON),
                              "--out", str(home / "exports"), *h])[:2]
    for name, (w, m) in out.items():
        print(f"  {name}: {w:.0f} s, {m:.0f} MiB", file=sys.stderr, flush=True)
    return out


def service(home: Path, seconds: float) -> dict:
    """Start-up to ready, resident memory once warm, /recommend latency at 8 connections."""
    import psutil
    from loadgen import build_request
    from serving_latency import KEYS, customers, free_port, measure, start, stop

    from patron.serving.launch import server_env
    from patron.settings import REPO_ROOT, PatronSettings

    settings = PatronSettings(home=home, storefront_keys=KEYS["storefront"], crm_keys=KEYS["crm"], admin_keys=KEYS["admin"])
    port = free_port()
    t0 = time.perf_counter()
    proc = start([sys.executable, "-m", "bentoml", "serve", "patron.serving.service:Patron", "--port", str(port),
                  "--working-dir", str(REPO_ROOT)], server_env(settings), port, home / "serve.log")
    ready_s = time.perf_counter() - t0
    try:
        ids = customers(settings)
        reqs = [build_request("127.0.0.1", port, "/recommend", {"customer_id": c, "k": 10}, {"X-API-Key": KEYS["storefront"]})
                for c in ids]
        latency = measure(port, reqs, connections=8, seconds=seconds, runs=1)
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        # resident (rss) counts the model files' mapped pages in every process that touched them;
        # proportional (pss) shares them out, private (uss) leaves them out
        mem = {p.pid: p.memory_full_info() for p in procs if p.is_running()}
        mib = {k: {p: getattr(m, k) / 2**20 for p, m in mem.items()} for k in ("rss", "pss", "uss")}
        return {"ready_s": ready_s, "rss_total_mib": sum(mib["rss"].values()), "pss_total_mib": sum(mib["pss"].values()),
                "rss_largest_process_mib": max(mib["rss"].values()), "uss_largest_process_mib": max(mib["uss"].values()),
                "processes": len(mem), **latency}
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), help="a named size (or give --customers/--products/--days)")
    ap.add_argument("--customers", type=int)
    ap.add_argument("--products", type=int)
    ap.add_argument("--days", type=int)
    ap.add_argument("--raw", type=Path, help="folder of the shop's daily files (written here if missing)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/patron-scale"))
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=15.0, help="length of the latency measurement")
    ap.add_argument("--service-only", type=Path, metavar="HOME", help="only measure the service on this trained state")
    args = ap.parse_args()
    if args.service_only:
        serve = service(args.service_only, args.seconds)
        print(json.dumps({"machine": machine(), "home": str(args.service_only), "service": serve}, indent=1))
        print(_service_line(serve))
        return
    customers, products, days = SIZES[args.size] if args.size else (args.customers, args.products, args.days)
    if not (customers and products and days):
        ap.error("give --size or all of --customers, --products, --days")
    raw = args.raw or args.work / f"shop-{customers}-{products}-{days}"
    if not raw.exists():
        t0 = time.perf_counter()
        run_step([patron(), "synth", "--customers", str(customers), "--products", str(products), "--days", str(days),
                  "--out", str(raw), "--gzip"])
        print(f"synthetic shop written in {time.perf_counter() - t0:.0f} s: {raw}", file=sys.stderr)
    as_of = (SYNTH_START + dt.timedelta(days=days)).isoformat()  # the day after the shop's last day
    home = args.work / "home"
    runs = []
    for i in range(args.runs):
        print(f"run {i + 1} of {args.runs}", file=sys.stderr)
        runs.append(batch_run(raw, home, as_of))
    names = list(runs[0])
    table = {n: (statistics.median(r[n][0] for r in runs), max(r[n][1] for r in runs)) for n in names}
    total_s = statistics.median(sum(w for w, _ in r.values()) for r in runs)
    serve = service(home, args.seconds)
    result = {"machine": machine(), "customers": customers, "products": products, "days": days, "as_of": as_of,
              "runs": args.runs, "steps": {n: {"wall_s": round(w, 1), "peak_mib": round(m)} for n, (w, m) in table.items()},
              "total_s": round(total_s, 1), "peak_mib": round(max(m for _, m in table.values())), "service": serve}
    print(json.dumps(result, indent=1))
    print(f"\n{customers:,} customers, {products:,} products, {days} days; median of {args.runs} run(s)\n")
    print("| step | wall | peak memory |\n|---|---:|---:|")
    for n, (w, m) in table.items():
        print(f"| {n} | {w / 60:.1f} min | {m / 1024:.2f} GiB |")
    print(f"| **pipeline + export** | **{total_s / 60:.1f} min** | **{result['peak_mib'] / 1024:.2f} GiB** |")
    print("\n" + _service_line(serve))


def _service_line(serve: dict) -> str:
    return (f"service: ready in {serve['ready_s']:.0f} s, {serve['processes']} processes, {serve['rss_total_mib']:.0f} MiB "
            f"resident, {serve['pss_total_mib']:.0f} MiB proportional (largest process {serve['rss_largest_process_mib']:.0f} MiB "
            f"resident, {serve['uss_largest_process_mib']:.0f} MiB its own); /recommend at 8 connections: "
            f"{serve['rps']:.0f} req/s, p50 {serve['p50_ms']:.1f} ms, p99 {serve['p99_ms']:.1f} ms, {serve['errors']} errors")


if __name__ == "__main__":
    main()
