"""Soak: a realistic mix of storefront and CRM traffic for a sustained period, loopback only.

    PATRON_HOME=<state dir with trained champions> python benchmarks/soak.py --seconds 120

Mix (by request): 80% /recommend (known customers, some with exclusions, some anonymous baskets,
some unknown ids), 10% /similar_items, 3% /popular, 5% /churn with 50 ids, 2% /events with a
batch of 10 purchases and cart additions (every event id new; the events go into the state
directory's event log, so soak a copy of a state directory you care about). Eight keep-alive
connections paced to ``--rate`` requests per second in all. Reports, per endpoint, the count,
errors (anything but 200) and latency percentiles, and the service's resident memory (all of its
processes) at the start and the end of the measured period and every 10 seconds in between.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import build_request, run_sync  # noqa: E402
from serving_latency import KEYS, customers, free_port, start, stop  # noqa: E402

from patron.serving.launch import server_env  # noqa: E402
from patron.settings import REPO_ROOT, PatronSettings  # noqa: E402


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants."""
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--rate", type=float, default=400.0)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    settings = PatronSettings(storefront_keys=KEYS["storefront"], crm_keys=KEYS["crm"], admin_keys=KEYS["admin"],
                              serve_workers=args.workers)
    ids = customers(settings)
    rng = random.Random(0)
    port = free_port()
    out = Path(settings.paths().root) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    proc = start([sys.executable, "-m", "bentoml", "serve", "patron.serving.service:Patron", "--port", str(port), "--working-dir", str(REPO_ROOT)],
                 server_env(settings), port, out / "soak.log")
    try:
        sf, crm = {"X-API-Key": KEYS["storefront"]}, {"X-API-Key": KEYS["crm"]}
        items = ["85123A", "22423", "47566", "85099B", "84879", "20725", "22720", "23203"]
        mix: list[tuple[str, bytes]] = []
        for i in range(4000):
            r = rng.random()
            c = rng.choice(ids)
            if r < 0.60:
                body = {"customer_id": c, "k": rng.choice([5, 10, 20])}
                if rng.random() < 0.3:
                    body["exclude_purchased"] = True
                mix.append(("/recommend", build_request("127.0.0.1", port, "/recommend", body, sf)))
            elif r < 0.70:
                mix.append(("/recommend", build_request("127.0.0.1", port, "/recommend", {"session_items": rng.sample(items, 2), "k": 10}, sf)))
            elif r < 0.80:
                mix.append(("/recommend", build_request("127.0.0.1", port, "/recommend", {"customer_id": 10**9 + i, "k": 10}, sf)))
            elif r < 0.90:
                mix.append(("/similar_items", build_request("127.0.0.1", port, "/similar_items", {"item_id": rng.choice(items), "k": 10}, sf)))
            elif r < 0.93:
                mix.append(("/popular", build_request("127.0.0.1", port, "/popular", {"k": 20, "days": rng.choice([7, 30, 90])}, sf)))
            elif r < 0.98:
                mix.append(("/churn", build_request("127.0.0.1", port, "/churn", {"customer_ids": rng.sample(ids, 50)}, crm)))
            else:
                mix.append(("/events", b""))  # built when sent, so that every event id is new
        run_id = uuid.uuid4().hex[:8]

        def pick(n: int) -> tuple[str, bytes]:
            tag, req = mix[n % len(mix)]
            if tag != "/events":
                return tag, req
            when = dt.datetime(2011, 7, 2, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=n)
            events = [{"event_id": f"soak-{run_id}-{n}-{k}", "type": "purchase" if k % 2 else "add_to_cart",
                       "customer_id": ids[(n * 10 + k) % len(ids)], "item_id": items[(n + k) % len(items)],
                       "quantity": 1, "price": 2.5, "timestamp": when.isoformat()} for k in range(10)]
            for e in events:
                if e["type"] != "purchase":
                    del e["quantity"], e["price"]
            return tag, build_request("127.0.0.1", port, "/events", {"events": events}, sf)

        memory: dict[str, float] = {}
        series: list[tuple[float, float]] = []  # (seconds into the measured period, RSS MiB)
        warmup = 5.0
        done = threading.Event()

        def sample() -> None:  # every 10 s of the measured period, to tell growth from a plateau
            if done.wait(warmup):
                return
            t0 = time.time()
            memory["start"] = rss_mib(proc.pid)
            series.append((0.0, memory["start"]))
            while not done.wait(10.0):
                series.append((round(time.time() - t0, 1), rss_mib(proc.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.time()
        result = run_sync("127.0.0.1", port, pick, connections=8, duration=args.seconds, warmup=warmup, rate=args.rate,
                          check=lambda status, body: status == 200)
        done.set()
        sampler.join()
        memory["end"] = rss_mib(proc.pid)
        report = {
            "seconds": args.seconds, "offered_rate": args.rate, "workers": args.workers,
            "total": {"requests": result.requests, "errors": result.errors, "rps": round(result.rps, 1)},
            "endpoints": {t: {"requests": r.requests, "errors": r.errors, "p50_ms": round(r.pct(50), 2),
                              "p99_ms": round(r.pct(99), 2), "max_ms": round(float(r.latencies_ms.max()), 2)}
                          for t, r in sorted(result.by_tag.items())},
            "rss_mib": {k: round(v, 1) for k, v in memory.items()},
            "rss_mib_every_10s": [round(v, 1) for _, v in series],
            "wall_seconds": round(time.time() - started, 1),
        }
        print(json.dumps(report, indent=1))
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
