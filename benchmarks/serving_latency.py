"""Latency and throughput of the service on this machine, with the load generator beside it.

    PATRON_HOME=<state dir with trained champions> python benchmarks/serving_latency.py [--runs 3]

Starts, one after the other: the Patron service (1 and 2 workers), an empty BentoML endpoint and a
bare uvicorn + Starlette endpoint (the floors, benchmarks/floors.py). Each is driven by
benchmarks/loadgen.py over keep-alive connections on loopback:

* ``/recommend``, 8 connections, closed loop (as fast as answers come back), real customer ids;
* ``/recommend``, 8 connections paced to 500 requests/s in all;
* ``/churn`` with 100 ids per call, one connection, closed loop.

Each measurement is ``--seconds`` long after a 2 s warm-up and repeated ``--runs`` times; the
table gives the median of the runs. Only 200 answers count as successes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import build_request, run_sync  # noqa: E402

from patron.features.ingest import OrderStore  # noqa: E402
from patron.serving.launch import server_env, wait_ready  # noqa: E402
from patron.settings import REPO_ROOT, PatronSettings  # noqa: E402

KEYS = {"storefront": "bench-sf", "crm": "bench-crm", "admin": "bench-admin"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def customers(settings: PatronSettings, n: int = 2000) -> list[int]:
    files = ", ".join(f"'{p}'" for p in OrderStore(settings.paths().data).committed_parts())
    with duckdb.connect() as con:
        rows = con.execute(f"SELECT DISTINCT customer_id FROM read_parquet([{files}]) WHERE line_class = 'sale' "
                           f"ORDER BY hash(customer_id) LIMIT {n}").fetchall()
    return [int(r[0]) for r in rows]


def start(cmd: list[str], env: dict, port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO_ROOT)
    ready = wait_ready(f"http://127.0.0.1:{port}", proc, timeout=300) if "bentoml" in cmd else _wait_port(port, proc)
    if not ready:
        stop(proc)
        raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
    return proc


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def measure(port: int, requests: list[bytes], *, connections: int, seconds: float, runs: int, rate: float | None = None) -> dict:
    results = [run_sync("127.0.0.1", port, requests, connections=connections, duration=seconds, warmup=2.0, rate=rate,
                        check=lambda status, body: status == 200) for _ in range(runs)]
    med = lambda f: round(statistics.median(f(r) for r in results), 2)  # noqa: E731
    return {"rps": med(lambda r: r.rps), "p50_ms": med(lambda r: r.pct(50)), "p90_ms": med(lambda r: r.pct(90)),
            "p99_ms": med(lambda r: r.pct(99)), "errors": sum(r.errors for r in results),
            "requests": sum(r.requests for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    settings = PatronSettings(storefront_keys=KEYS["storefront"], crm_keys=KEYS["crm"], admin_keys=KEYS["admin"])
    ids = customers(settings)
    out = Path(settings.paths().root) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    table = []

    def recommend_requests(port: int, key: str | None) -> list[bytes]:
        headers = {"X-API-Key": key} if key else {}
        return [build_request("127.0.0.1", port, "/recommend", {"customer_id": c, "k": 10}, headers) for c in ids]

    for workers in [int(w) for w in args.workers.split(",")]:
        port = free_port()
        env = server_env(settings.model_copy(update={"serve_workers": workers}))
        proc = start([sys.executable, "-m", "bentoml", "serve", "patron.serving.service:Patron", "--port", str(port), "--working-dir", str(REPO_ROOT)],
                     env, port, out / f"patron-w{workers}.log")
        try:
            reqs = recommend_requests(port, KEYS["storefront"])
            churn = [build_request("127.0.0.1", port, "/churn", {"customer_ids": ids[i:i + 100]}, {"X-API-Key": KEYS["crm"]})
                     for i in range(0, len(ids) - 100, 100)]
            table.append({"server": f"Patron, {workers} worker(s)", "load": "/recommend, 8 conn, closed loop",
                          **measure(port, reqs, connections=8, seconds=args.seconds, runs=args.runs)})
            table.append({"server": f"Patron, {workers} worker(s)", "load": "/recommend, 8 conn, 500 req/s",
                          **measure(port, reqs, connections=8, seconds=args.seconds, runs=args.runs, rate=500)})
            table.append({"server": f"Patron, {workers} worker(s)", "load": "/churn 100 ids, 1 conn",
                          **measure(port, churn, connections=1, seconds=args.seconds, runs=args.runs)})
        finally:
            stop(proc)
    port = free_port()
    env = {**os.environ, "BENTOML_HOME": str(out / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    proc = start([sys.executable, "-m", "bentoml", "serve", "benchmarks.floors:Empty", "--port", str(port), "--working-dir", str(REPO_ROOT)],
                 env, port, out / "empty.log")
    try:
        table.append({"server": "empty BentoML endpoint (defaults)", "load": "/recommend, 8 conn, closed loop",
                      **measure(port, recommend_requests(port, None), connections=8, seconds=args.seconds, runs=args.runs)})
    finally:
        stop(proc)
    port = free_port()
    proc = start([sys.executable, "-m", "uvicorn", "benchmarks.floors:app", "--port", str(port), "--no-access-log", "--log-level", "warning"],
                 dict(os.environ), port, out / "uvicorn.log")
    try:
        table.append({"server": "bare uvicorn + Starlette", "load": "/recommend, 8 conn, closed loop",
                      **measure(port, recommend_requests(port, None), connections=8, seconds=args.seconds, runs=args.runs)})
    finally:
        stop(proc)
    print(json.dumps(table, indent=1))
    print("| server | load | req/s | p50 ms | p90 ms | p99 ms | errors |\n|---|---|---:|---:|---:|---:|---:|")
    for r in table:
        print(f"| {r['server']} | {r['load']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |")


if __name__ == "__main__":
    main()
