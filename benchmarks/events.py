"""Storefront events on this machine: how many are accepted per second, and how soon after the
acknowledgement `/recommend` shows them.

    PATRON_HOME=<state dir with trained champions> python benchmarks/events.py [--runs 3] [--seconds 10]

Starts the Patron service (one worker, the default SQLite online store) on the state directory and:

* **throughput**: ``--connections`` connections post batches of 100 purchase events, each event for
  another real customer (the worst case: every event makes a customer's online state to rebuild),
  closed loop; events/s = accepted events / seconds. Every event id is new, so nothing is a cheap
  duplicate. Repeated ``--runs`` times; the table gives the median.
* **ack -> visible**: one purchase at a time for a customer, then `/recommend` for that customer
  until its ``freshness.events_through`` shows the purchase; the delay from the acknowledgement to
  the first answer that shows it. Measured idle and while the throughput load runs beside it.

The events are written into the state directory's event log (ids prefixed ``bench-``); use a copy of
a state directory you care about.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import _read_response, build_request, run_sync  # noqa: E402
from serving_latency import KEYS, customers, free_port, start, stop  # noqa: E402

from patron.serving.launch import server_env  # noqa: E402
from patron.settings import PatronSettings  # noqa: E402

BATCH = 100


def batches(ids: list[int], items: list[str], port: int, n: int, base: dt.datetime) -> list[bytes]:
    run = uuid.uuid4().hex[:8]
    rng = np.random.default_rng(7)
    out = []
    for b in range(n):
        events = [{"event_id": f"bench-{run}-{b}-{k}", "type": "purchase", "customer_id": int(ids[(b * BATCH + k) % len(ids)]),
                   "item_id": items[int(rng.integers(len(items)))], "quantity": 1, "price": 2.5,
                   "timestamp": (base + dt.timedelta(seconds=b)).isoformat()} for k in range(BATCH)]
        out.append(build_request("127.0.0.1", port, "/events", {"events": events}, {"X-API-Key": KEYS["storefront"]}))
    return out


async def _visibility(port: int, ids: list[int], items: list[str], samples: int, base: dt.datetime) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    run = uuid.uuid4().hex[:8]
    delays, probes = [], []
    try:
        for i in range(samples):
            c = ids[i % len(ids)]
            when = (base + dt.timedelta(hours=1, seconds=i)).isoformat()
            event = {"event_id": f"bench-vis-{run}-{i}", "type": "purchase", "customer_id": c, "item_id": items[i % len(items)],
                     "quantity": 1, "price": 2.5, "timestamp": when}
            writer.write(build_request("127.0.0.1", port, "/events", {"events": [event]}, {"X-API-Key": KEYS["storefront"]}))
            status, body = await _read_response(reader)
            acked = time.perf_counter()
            assert status == 200 and json.loads(body)["accepted"] == 1, body[:300]
            probe = build_request("127.0.0.1", port, "/recommend", {"customer_id": c, "k": 10}, {"X-API-Key": KEYS["storefront"]})
            n = 0
            while True:
                writer.write(probe)
                status, body = await _read_response(reader)
                n += 1
                fresh = json.loads(body).get("freshness") or {}
                if fresh.get("events_through") == when:
                    delays.append((time.perf_counter() - acked) * 1000)
                    probes.append(n)
                    break
                if time.perf_counter() - acked > 10:
                    raise RuntimeError(f"event {event['event_id']} not visible after 10 s")
    finally:
        writer.close()
    return delays, probes


def visibility(port: int, ids: list[int], items: list[str], samples: int, base: dt.datetime) -> dict:
    delays, probes = asyncio.run(_visibility(port, ids, items, samples, base))
    d = np.asarray(delays)
    return {"samples": len(d), "p50_ms": round(float(np.percentile(d, 50)), 2), "p99_ms": round(float(np.percentile(d, 99)), 2),
            "max_ms": round(float(d.max()), 2), "shown_by_first_recommend": sum(p == 1 for p in probes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=2)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here too")
    args = ap.parse_args()

    settings = PatronSettings(storefront_keys=KEYS["storefront"], crm_keys=KEYS["crm"], admin_keys=KEYS["admin"])
    ids = customers(settings, 4000)
    from patron.training.data import load_lines

    lines = load_lines(settings.paths().data)
    items = lines.loc[lines["line_class"] == "sale", "item_id"].dropna().value_counts().index[:2000].astype(str).tolist()
    base = lines["invoice_ts"].max().to_pydatetime() + dt.timedelta(days=1)
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"patron-events-bench-{port}.log"
    proc = start([sys.executable, "-m", "bentoml", "serve", "patron.serving.service:Patron", "--port", str(port), "--host", "127.0.0.1"],
                 server_env(settings), port, log)
    try:
        idle = visibility(port, ids, items, args.samples, base)
        reqs = batches(ids, items, port, 6000, base)
        runs = []
        for _ in range(args.runs):
            r = run_sync("127.0.0.1", port, reqs[len(runs) * 2000:(len(runs) + 1) * 2000], connections=args.connections,
                         duration=args.seconds, warmup=2.0,
                         check=lambda status, body: status == 200 and json.loads(body)["accepted"] == BATCH)
            runs.append(r)
        busy: dict = {}
        loader = threading.Thread(target=lambda: busy.update(load=run_sync(
            "127.0.0.1", port, reqs[-2000:], connections=args.connections, duration=args.seconds + 20, warmup=0.0)))
        loader.start()
        time.sleep(1.0)
        loaded = visibility(port, ids, items, args.samples, base + dt.timedelta(days=1))
        loader.join()
    finally:
        stop(proc)
    med = lambda f: round(statistics.median(f(r) for r in runs), 2)  # noqa: E731
    result = {
        "batch": BATCH, "connections": args.connections, "runs": args.runs, "seconds": args.seconds,
        "batches_per_s": med(lambda r: r.rps), "events_per_s": med(lambda r: r.rps * BATCH),
        "batch_p50_ms": med(lambda r: r.pct(50)), "batch_p99_ms": med(lambda r: r.pct(99)),
        "errors": sum(r.errors for r in runs),
        "visible_idle": idle, "visible_under_load": loaded,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
