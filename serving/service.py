"""The BentoML service: typed endpoints over :mod:`serving.logic`, behind :mod:`serving.edge`.

    bentoml serve serving.service:Patron --port 3000      (or `patron serve`)

Why it is shaped like this (measurements in docs/benchmarks.md):

* every endpoint is ``async``: a sync BentoML endpoint hops to a thread pool per request;
* the access log and the per-request tracing middleware are off for the API routes: together
  they cost about as much CPU as the endpoint's own work;
* the models load in a background thread, so that /livez answers at once and /readyz says false
  until the champions and the online store are ready; requests before that get a 503.

The CRM's batch endpoints read up to a thousand customers from the online store; that read runs in
a worker thread so it never stalls the storefront's requests on the event loop.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

import anyio
import bentoml
from starlette.responses import JSONResponse, Response

from pipelines.settings import PatronSettings
from serving import logic, openapi
from serving import schemas as S
from serving.edge import Edge
from serving.runtime import FeaturesUnavailable, NotReady, Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")


def _unavailable(exc: Exception) -> JSONResponse:
    if isinstance(exc, NotReady):
        return JSONResponse({"error": f"not ready: {exc}", "detail": []}, status_code=503, headers={"retry-after": "5"})
    return JSONResponse({"error": f"customer features are unavailable: {exc}", "detail": []}, status_code=503,
                        headers={"retry-after": "5"})


@bentoml.service(
    name="patron",
    workers=PatronSettings().serve_workers,
    logging={"access": {"enabled": False}},
    tracing={"sample_rate": 0.0, "excluded_urls": list(S.SCOPES)},
    monitoring={"enabled": False},
    metrics={"enabled": True, "namespace": "patron"},
)
class Patron:
    """Recommendations for the storefront; churn, LTV and profiles for the CRM."""

    def __init__(self) -> None:
        from threadpoolctl import threadpool_limits

        # One thread per numeric library call: concurrent requests already use both cores, and
        # OpenMP threads spin-waiting for each other made tree scoring several times slower.
        self._threads = threadpool_limits(limits=1)
        os.umask(0o077)  # anything the service writes (metrics files, downloads) stays private
        self.runtime = Runtime(PatronSettings())
        threading.Thread(target=self.runtime.reload, name="patron-load", daemon=True).start()

    async def __is_ready__(self) -> bool:
        return self.runtime.champions is not None and await anyio.to_thread.run_sync(self.runtime.store_ok)

    async def _call(self, fn: Callable[..., T], request: object, *, thread: bool = False) -> T | Response:
        """Run one endpoint's logic; the answer goes out as JSON serialised once, here (the model
        was validated when it was built; BentoML would validate and copy it again)."""
        try:
            if thread:
                answer = await anyio.to_thread.run_sync(fn, self.runtime, request)
            else:
                answer = fn(self.runtime, request)
        except (NotReady, FeaturesUnavailable) as exc:
            return _unavailable(exc)
        return Response(answer.model_dump_json(), media_type="application/json")

    @bentoml.api(route="/recommend", input_spec=S.RecommendRequest, output_spec=S.RecommendResponse)
    async def recommend(self, **fields) -> S.RecommendResponse:
        """Ranked items for a customer, an anonymous basket, or nobody (best sellers)."""
        return await self._call(logic.recommend, S.RecommendRequest(**fields))

    @bentoml.api(route="/similar_items", input_spec=S.SimilarItemsRequest, output_spec=S.SimilarItemsResponse)
    async def similar_items(self, **fields) -> S.SimilarItemsResponse:
        """Items most often bought with the given item."""
        return await self._call(logic.similar_items, S.SimilarItemsRequest(**fields))

    @bentoml.api(route="/popular", input_spec=S.PopularRequest, output_spec=S.PopularResponse)
    async def popular(self, **fields) -> S.PopularResponse:
        """Best sellers: most distinct buyers over the last ``days`` days."""
        return await self._call(logic.popular, S.PopularRequest(**fields))

    @bentoml.api(route="/churn", input_spec=S.CustomersRequest, output_spec=S.ChurnResponse)
    async def churn(self, **fields) -> S.ChurnResponse:
        """Churn probability, risk band and reasons for 1..1000 customers, in the order asked."""
        return await self._call(logic.churn, S.CustomersRequest(**fields), thread=True)

    @bentoml.api(route="/ltv", input_spec=S.CustomersRequest, output_spec=S.LTVResponse)
    async def ltv(self, **fields) -> S.LTVResponse:
        """Predicted spend and orders, P(alive), tier and next order date for 1..1000 customers."""
        return await self._call(logic.ltv, S.CustomersRequest(**fields), thread=True)

    @bentoml.api(route="/customer", input_spec=S.CustomerRequest, output_spec=S.CustomerResponse)
    async def customer(self, **fields) -> S.CustomerResponse:
        """One customer's profile: key features, churn, LTV, recent orders and recommendations."""
        return await self._call(logic.customer, S.CustomerRequest(**fields), thread=True)

    @bentoml.api(route="/admin/reload", input_spec=S.ReloadRequest, output_spec=S.ReloadResponse)
    async def admin_reload(self, **fields) -> S.ReloadResponse:
        """Load the current @champion models; on failure the models in use keep serving."""
        ok, message, versions, previous = await anyio.to_thread.run_sync(self.runtime.reload)
        body = S.ReloadResponse(reloaded=ok, message=message, model_versions=versions, previous_versions=previous)
        if not ok:
            return JSONResponse(body.model_dump(), status_code=409 if previous else 503)
        return body


Patron.add_asgi_middleware(Edge, scopes=S.SCOPES, models=S.REQUEST_MODELS, openapi=openapi.document())
