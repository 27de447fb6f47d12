"""A small closed-loop HTTP/1.1 load generator (asyncio, keep-alive connections, no dependencies).

Each of ``connections`` connections sends its next request as soon as the previous answer is read,
optionally paced so that all connections together offer at most ``rate`` requests per second.
Latency is measured per request from just before the write to the end of the body. Written for
loopback benchmarks on the same machine as the server: it parses only what it needs (status line,
Content-Length or chunked bodies), so it spends little CPU per request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: np.ndarray
    statuses: dict[int, int] = field(default_factory=dict)
    by_tag: dict[str, "LoadResult"] = field(default_factory=dict)  # when requests are (tag, bytes) pairs

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")

    def summary(self) -> dict:
        return {"requests": self.requests, "errors": self.errors, "rps": round(self.rps, 1),
                "p50_ms": round(self.pct(50), 2), "p90_ms": round(self.pct(90), 2),
                "p99_ms": round(self.pct(99), 2), "max_ms": round(float(self.latencies_ms.max()), 2) if len(self.latencies_ms) else None,
                "statuses": self.statuses}


def build_request(host: str, port: int, path: str, body: dict | None, headers: dict[str, str] | None = None) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    lines = [f"POST {path} HTTP/1.1" if body is not None else f"GET {path} HTTP/1.1",
             f"Host: {host}:{port}", "Connection: keep-alive"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        if lname == b"content-length":
            length = int(value.strip())
        elif lname == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        return status, bytes(body)
    return status, await reader.readexactly(length or 0)


async def run(
    host: str,
    port: int,
    requests: Sequence[bytes | tuple[str, bytes]] | Callable[[int], bytes | tuple[str, bytes]],
    *,
    connections: int = 8,
    duration: float = 10.0,
    warmup: float = 2.0,
    rate: float | None = None,
    check: Callable[[int, bytes], bool] | None = None,
) -> LoadResult:
    """Drive the server for ``warmup + duration`` seconds; only the last ``duration`` are measured."""
    pick = requests if callable(requests) else (lambda i: requests[i % len(requests)])
    lat: list[float] = []
    statuses: dict[int, int] = {}
    tagged: dict[str, list] = {}  # tag -> [latencies, statuses, errors]
    errors = 0
    counter = 0
    t0 = time.perf_counter()
    t_measure = t0 + warmup
    t_end = t_measure + duration
    interval = connections / rate if rate else 0.0

    async def conn(cid: int) -> None:
        nonlocal errors, counter
        reader, writer = await asyncio.open_connection(host, port)
        next_send = time.perf_counter() + (interval * cid / connections if interval else 0.0)
        try:
            while True:
                now = time.perf_counter()
                if now >= t_end:
                    return
                if interval:
                    if next_send > now:
                        await asyncio.sleep(next_send - now)
                    next_send += interval
                counter += 1
                req = pick(counter)
                tag, req = req if isinstance(req, tuple) else (None, req)
                start = time.perf_counter()
                writer.write(req)
                status, body = await _read_response(reader)
                end = time.perf_counter()
                if start >= t_measure and end <= t_end:
                    lat.append((end - start) * 1000)
                    statuses[status] = statuses.get(status, 0) + 1
                    bad = check is not None and not check(status, body)
                    errors += bad
                    if tag is not None:
                        t = tagged.setdefault(tag, [[], {}, 0])
                        t[0].append((end - start) * 1000)
                        t[1][status] = t[1].get(status, 0) + 1
                        t[2] += bad
        finally:
            writer.close()

    await asyncio.gather(*(conn(i) for i in range(connections)))
    arr = np.asarray(lat)
    by_tag = {t: LoadResult(len(v[0]), v[2], duration, np.asarray(v[0]), v[1]) for t, v in tagged.items()}
    return LoadResult(len(arr), errors, duration, arr, statuses, by_tag)


def run_sync(*args, **kwargs) -> LoadResult:
    try:
        import uvloop  # the server's event loop; also the cheapest one for the client

        return uvloop.run(run(*args, **kwargs))
    except ImportError:
        return asyncio.run(run(*args, **kwargs))
