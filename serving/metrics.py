"""The service's request metrics, labelled by route: what was asked of which endpoint, never the path
a client typed.

BentoML's own traffic metrics sit outside the edge and label every request with its raw path, so
that any client, without a key, could add label values at will (4,000 random paths took /metrics
from 214 KB to 16 MB) and put whatever the path held, a customer id say, into the keyless
/metrics. They are switched off (``metrics.enabled: false``); these replace them, with one label
value per route of the service and one, ``other``, for every other path.

In a service with several workers each process writes its values to BentoML's multi-process
directory (``PROMETHEUS_MULTIPROC_DIR``) and /metrics sums them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

OTHER = "other"
_metrics: RouteMetrics | None = None


class RouteMetrics:
    def __init__(self, routes: Iterable[str]) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.routes = frozenset(routes)
        self.requests = Counter("patron_requests_total", "requests by route and status", ["endpoint", "http_response_code"])
        self.duration = Histogram("patron_request_duration_seconds", "time to the last byte of the answer", ["endpoint"],
                                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.in_progress = Gauge("patron_requests_in_progress", "requests being answered", ["endpoint"],
                                 multiprocess_mode="livesum")

    def endpoint(self, path: str) -> str:
        return path if path in self.routes else OTHER

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, http_response_code=str(status)).inc()
        self.duration.labels(endpoint=endpoint).observe(seconds)


def route_metrics(routes: Iterable[str]) -> RouteMetrics:
    """The process's one set of request metrics (Prometheus refuses a metric registered twice)."""
    global _metrics
    if _metrics is None:
        _metrics = RouteMetrics(routes)
    return _metrics


def exposition() -> tuple[bytes, str]:
    """The Prometheus text of every worker's metrics (or of this process's, with one worker)."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
