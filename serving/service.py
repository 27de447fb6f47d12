"""The BentoML service: typed endpoints over :mod:`serving.logic`, behind :mod:`serving.edge`.

    bentoml serve serving.service:Patron --port 3000      (or `patron serve`)

Why it is shaped like this (measurements in docs/benchmarks.md):

* every endpoint is ``async``: a sync BentoML endpoint hops to a thread pool per request;
* the access log and the per-request tracing middleware are off for the API routes: together
  they cost about as much CPU as the endpoint's own work;
* the models load in a background thread, so that /livez answers at once and /readyz says false
  until the champions and the online store are ready; requests before that get a 503. The CRM
  lane loads its models in its own process at the same time;
* the serving supervisor imports this module too, to read the service's configuration, and loads
  no model: the models' libraries (MLflow, scikit-learn, PyTorch) are imported by the workers only.

The CRM's batch endpoints read up to a thousand customers from the online store; that read runs in
a worker thread so it never stalls the storefront's requests on the event loop.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import anyio
import bentoml
from starlette.responses import JSONResponse, Response

from patron.compat import uvicorn_http
from patron.compat.bentoml_timeout import cancel_request_timers
from patron.serving import openapi
from patron.serving import schemas as S
from patron.serving.crm_lane import CrmLane
from patron.serving.edge import KEY_ID, Edge
from patron.serving.errors import EventsUnavailable, FeaturesUnavailable, LaneUnavailable, NotReady
from patron.settings import PatronSettings

if TYPE_CHECKING:
    from patron.serving.runtime import Runtime

log = logging.getLogger(__name__)

# The worker's HTTP connections get limits no client can talk past (request head size and time,
# open connections): BentoML builds the worker's uvicorn Config after importing this module, and
# takes its protocol from here (patron/compat/uvicorn_http.py).
_limits = PatronSettings()
uvicorn_http.install(max_connections=_limits.max_connections, head_timeout=_limits.head_timeout_seconds)


T = TypeVar("T")


def _error(status: int, body: dict, retry_after: int | None = None) -> JSONResponse:
    """An error answer of Patron's own (the edge replaces any other error answer with a plain one)."""
    headers = {"x-patron-answer": "1", **({"retry-after": str(retry_after)} if retry_after else {})}
    return JSONResponse(body, status_code=status, headers=headers)


def _unavailable(exc: Exception) -> JSONResponse:
    if isinstance(exc, NotReady):
        return _error(503, {"error": f"not ready: {exc}", "detail": []}, retry_after=5)
    if isinstance(exc, LaneUnavailable):
        return _error(503, {"error": f"scoring is restarting, retry: {exc}", "detail": []}, retry_after=1)
    if isinstance(exc, EventsUnavailable):
        return _error(503, {"error": f"events cannot be stored right now, nothing was kept: {exc}", "detail": []}, retry_after=5)
    return _error(503, {"error": f"customer features are unavailable: {exc}", "detail": []}, retry_after=5)


class _EventMetrics:
    """Prometheus metrics of the event path (created in the worker, after BentoML set up the
    multi-process collector, so that /metrics sums them over workers)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.events = Counter("patron_events_total", "storefront events by outcome", ["status"])
        self.visible = Histogram("patron_event_visible_seconds", "from receiving a batch to its events being online",
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.lag = Gauge("patron_event_lag_seconds", "how long the oldest stored event has waited to reach the online store "
                         "(0: all are online)", multiprocess_mode="livemax")
        self.pending = Gauge("patron_event_pending_customers", "customers whose stored events are not online yet",
                             multiprocess_mode="livemax")

    def record(self, answer: S.EventsResponse, seconds: float) -> None:
        for status, n in (("accepted", answer.accepted), ("duplicates", answer.duplicates), ("rejected", answer.rejected)):
            if n:
                self.events.labels(status=status).inc(n)
        if answer.visible and answer.accepted:
            self.visible.observe(seconds)


@bentoml.service(
    name="patron",
    workers=PatronSettings().serve_workers,
    logging={"access": {"enabled": False}},
    tracing={"sample_rate": 0.0, "excluded_urls": list(S.SCOPES)},
    monitoring={"enabled": False},
    # BentoML's traffic metrics label requests by their raw path; serving/metrics.py labels by route
    metrics={"enabled": False},
)
class Patron:
    """Recommendations for the storefront; churn, LTV and profiles for the CRM."""

    def __init__(self) -> None:
        from threadpoolctl import threadpool_limits

        # One thread per numeric library call: concurrent requests already use both cores, and
        # OpenMP threads spin-waiting for each other made tree scoring several times slower.
        self._threads = threadpool_limits(limits=1)
        os.umask(0o077)  # anything the service writes (metrics files, downloads) stays private
        # BentoML reads ``model_fields`` off the request object, which Pydantic 2.11 warns about, again
        # and again: thousands of lines in the log under load, each costing the request that printed it.
        warnings.filterwarnings("ignore", message="Accessing the 'model_fields' attribute on the instance",
                                category=DeprecationWarning, module=r"_bentoml_(sdk|impl)\.")
        cancel_request_timers()  # before the first request: BentoML's timeout middleware keeps no timers
        from patron.serving import logic
        from patron.serving.runtime import Runtime

        self._logic = logic
        settings = PatronSettings()
        self.runtime = Runtime(settings)
        self.lane = CrmLane(settings)
        # the lane's process loads its models while this one loads its own
        threading.Thread(target=self.lane.start, name="patron-lane-start", daemon=True).start()
        threading.Thread(target=self.runtime.reload, name="patron-load", daemon=True).start()
        self._metrics = _EventMetrics()
        self._stop = threading.Event()
        threading.Thread(target=self._publisher, name="patron-events", daemon=True).start()

    def _publisher(self) -> None:
        """Publishes customers whose events are stored but not yet online (after a failed push or a
        crash), and keeps the event-lag gauges current."""
        rt = self.runtime
        while not self._stop.wait(1.0):
            try:
                pending, lag = rt.events.lag()
                if pending:
                    rt.publish()
                    pending, lag = rt.events.lag()
                self._metrics.pending.set(pending)
                self._metrics.lag.set(lag)
            except Exception:  # never let the loop die; the next tick tries again
                log.exception("event publisher")

    async def __is_ready__(self) -> bool:
        return (self.runtime.champions is not None and self.lane.is_ready
                and await anyio.to_thread.run_sync(self.runtime.store_ok))

    async def _call(self, fn: Callable[..., T], request: object, *, thread: bool = False) -> T | Response:
        """Run one endpoint's logic; the answer goes out as JSON serialised once, here (the model
        was validated when it was built; BentoML would validate and copy it again)."""
        try:
            if thread:
                answer = await anyio.to_thread.run_sync(fn, self.runtime, request)
            else:
                answer = fn(self.runtime, request)
        except (NotReady, FeaturesUnavailable, EventsUnavailable) as exc:
            return _unavailable(exc)
        return Response(answer.model_dump_json(), media_type="application/json")

    async def _batch(self, endpoint: str, request: S.Request) -> Response:
        """A CRM batch, scored in the CRM lane's process (see serving/crm_lane.py)."""
        try:
            body = await self.lane.call(endpoint, request.model_dump_json())
        except (NotReady, FeaturesUnavailable, LaneUnavailable) as exc:
            return _unavailable(exc)
        return Response(body, media_type="application/json")

    @bentoml.api(route="/recommend", input_spec=S.RecommendRequest, output_spec=S.RecommendResponse)
    async def recommend(self, **fields) -> S.RecommendResponse:
        """Ranked items for a customer, an anonymous basket, or nobody (best sellers)."""
        return await self._call(self._logic.recommend, S.RecommendRequest(**fields))

    @bentoml.api(route="/similar_items", input_spec=S.SimilarItemsRequest, output_spec=S.SimilarItemsResponse)
    async def similar_items(self, **fields) -> S.SimilarItemsResponse:
        """Items most often bought with the given item."""
        return await self._call(self._logic.similar_items, S.SimilarItemsRequest(**fields))

    @bentoml.api(route="/popular", input_spec=S.PopularRequest, output_spec=S.PopularResponse)
    async def popular(self, **fields) -> S.PopularResponse:
        """Best sellers: most distinct buyers over the last ``days`` days."""
        return await self._call(self._logic.popular, S.PopularRequest(**fields))

    @bentoml.api(route="/churn", input_spec=S.CustomersRequest, output_spec=S.ChurnResponse)
    async def churn(self, **fields) -> S.ChurnResponse:
        """Churn probability, risk band and reasons for 1..1000 customers, in the order asked."""
        return await self._batch("/churn", S.CustomersRequest(**fields))

    @bentoml.api(route="/ltv", input_spec=S.CustomersRequest, output_spec=S.LTVResponse)
    async def ltv(self, **fields) -> S.LTVResponse:
        """Predicted spend and orders, P(alive), tier and next order date for 1..1000 customers."""
        return await self._batch("/ltv", S.CustomersRequest(**fields))

    @bentoml.api(route="/customer", input_spec=S.CustomerRequest, output_spec=S.CustomerResponse)
    async def customer(self, **fields) -> S.CustomerResponse:
        """One customer's profile: key features, churn, LTV, recent orders and recommendations."""
        return await self._call(self._logic.customer, S.CustomerRequest(**fields), thread=True)

    @bentoml.api(route="/events", input_spec=S.EventsRequest, output_spec=S.EventsResponse)
    async def events(self, ctx: bentoml.Context, **fields) -> S.EventsResponse:
        """Storefront events: each validated, deduplicated by event_id, stored durably before the
        answer, and applied to the customer's online features at once."""
        key = ctx.request.scope.get(KEY_ID)
        return await self._call(lambda rt, req: self._events(rt, req, key), S.EventsRequest(**fields), thread=True)

    def _events(self, rt: Runtime, request: S.EventsRequest, key_id: str | None) -> S.EventsResponse:
        started = time.perf_counter()
        answer = self._logic.events(rt, request, key_id)
        self._metrics.record(answer, time.perf_counter() - started)
        return answer

    @bentoml.api(route="/admin/reload", input_spec=S.ReloadRequest, output_spec=S.ReloadResponse)
    async def admin_reload(self, **fields) -> S.ReloadResponse:
        """Load the current @champion models; on failure the models in use keep serving."""
        ok, message, versions, previous = await anyio.to_thread.run_sync(self.runtime.reload)
        if ok:
            lane_ok, lane_message = await anyio.to_thread.run_sync(self.lane.reload)
            if not lane_ok:
                ok, message = False, f"{message}; the CRM lane did not reload: {lane_message}"
        body = S.ReloadResponse(reloaded=ok, message=message, model_versions=versions, previous_versions=previous)
        if not ok:
            return _error(409 if previous else 503, body.model_dump())
        return body


Patron.add_asgi_middleware(Edge, endpoints=S.ENDPOINTS, openapi=openapi.document(), body_timeout=_limits.body_timeout_seconds)
