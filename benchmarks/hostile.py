"""The storefront's latency and the service's memory while hostile clients run beside it.

    PATRON_HOME=<a trained state dir> python benchmarks/hostile.py --runs 3 --seconds 10

One worker; /recommend paced to 300 requests/s over 8 keep-alive connections, measured idle and
then while three kinds of attack run from other processes: keyless requests to invented paths
with a /metrics scrape every second (label spam), 16 connections trickling a request head a byte
at a time (slow headers), and 1 MiB bodies posted to /churn, announced and chunked (oversized
bodies). Resident memory of the server's processes is read before the attacks and 5 s after.
The state directory is copied first: nothing is written into the one given.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import build_request, run_sync  # noqa: E402
from serving_latency import KEYS, customers, free_port, start, stop  # noqa: E402

from patron.serving.launch import server_env  # noqa: E402
from patron.settings import REPO_ROOT, PatronSettings  # noqa: E402


def rss_mib(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def _send(port: int, data: bytes, read: bool = True) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(data)
            if read:
                s.recv(65536)
    except OSError:
        pass


def label_spam(port: int, stop_at: float) -> None:
    marker = uuid.uuid4().hex[:8]
    i, last_scrape = 0, 0.0
    while time.time() < stop_at:
        _send(port, build_request("127.0.0.1", port, f"/x{marker}{i}", {}))
        i += 1
        if time.time() - last_scrape > 1.0:
            _send(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            last_scrape = time.time()


def slow_headers(port: int, stop_at: float, connections: int = 16) -> None:
    socks: list[socket.socket] = []
    while time.time() < stop_at:
        while len(socks) < connections:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nX-API-Key: ")
                socks.append(s)
            except OSError:
                time.sleep(0.1)
        for s in list(socks):
            try:
                s.sendall(b"k")
            except OSError:
                socks.remove(s)
                s.close()
        time.sleep(0.2)
    for s in socks:
        s.close()


def oversized(port: int, stop_at: float) -> None:
    body = b'{"customer_ids": [' + b"1," * (512 * 1024) + b"1]}"
    announced = (f"POST /churn HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEYS['crm']}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    chunked = (f"POST /churn HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEYS['crm']}\r\nContent-Type: application/json\r\n"
               f"Transfer-Encoding: chunked\r\n\r\n").encode()
    chunked += b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[i:i + 65536] for i in range(0, len(body), 65536))) + b"0\r\n\r\n"
    while time.time() < stop_at:
        _send(port, announced)
        _send(port, chunked)


def measure(port: int, requests: list[bytes], seconds: float) -> dict:
    r = run_sync("127.0.0.1", port, requests, connections=8, duration=seconds, warmup=1.0, rate=300,
                 check=lambda status, body: status == 200)
    return {"p50_ms": r.pct(50), "p99_ms": r.pct(99), "errors": r.errors, "requests": r.requests}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    source = PatronSettings().paths().root
    work = Path(tempfile.mkdtemp(prefix="patron-hostile-"))
    home = work / "home"
    shutil.copytree(source, home, ignore=shutil.ignore_patterns("bentoml", "logs", "bench"))
    settings = PatronSettings(home=home, storefront_keys=KEYS["storefront"], crm_keys=KEYS["crm"], admin_keys=KEYS["admin"])
    ids = customers(settings)
    port = free_port()
    proc = start([sys.executable, "-m", "bentoml", "serve", "patron.serving.service:Patron", "--port", str(port),
                  "--working-dir", str(REPO_ROOT)], server_env(settings), port, work / "server.log")
    rows = []
    try:
        reqs = [build_request("127.0.0.1", port, "/recommend", {"customer_id": c, "k": 10}, {"X-API-Key": KEYS["storefront"]})
                for c in ids]
        measure(port, reqs, 3.0)  # warm
        memory_before = rss_mib(proc.pid)
        for run in range(args.runs):
            idle = measure(port, reqs, args.seconds)
            stop_at = time.time() + args.seconds + 3
            attackers = [mp.Process(target=f, args=(port, stop_at)) for f in (label_spam, slow_headers, oversized)]
            for a in attackers:
                a.start()
            time.sleep(1.0)
            busy = measure(port, reqs, args.seconds)
            for a in attackers:
                a.join()
            rows.append({"run": run, "idle": idle, "attacked": busy})
        time.sleep(5.0)
        memory_after = rss_mib(proc.pid)
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    med = lambda key, q: round(statistics.median(r[key][q] for r in rows), 2)  # noqa: E731
    summary = {"idle_p50_ms": med("idle", "p50_ms"), "idle_p99_ms": med("idle", "p99_ms"),
               "attacked_p50_ms": med("attacked", "p50_ms"), "attacked_p99_ms": med("attacked", "p99_ms"),
               "errors": sum(r["idle"]["errors"] + r["attacked"]["errors"] for r in rows),
               "rss_before_mib": round(memory_before, 1), "rss_after_mib": round(memory_after, 1)}
    print(json.dumps({"runs": rows, "summary": summary}, indent=1))
    print(f"| /recommend, 300 req/s | p50 ms | p99 ms |\n|---|---:|---:|\n| idle | {summary['idle_p50_ms']} | {summary['idle_p99_ms']} |\n"
          f"| beside the attacks | {summary['attacked_p50_ms']} | {summary['attacked_p99_ms']} |")
    print(f"resident memory: {summary['rss_before_mib']} MiB before, {summary['rss_after_mib']} MiB after; errors {summary['errors']}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
