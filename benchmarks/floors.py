"""Floors for the latency benchmark: what a server does with no work at all.

* ``Empty``: a BentoML service whose endpoint returns ``{}``, with BentoML's default settings;
* ``app``: a bare Starlette app on uvicorn returning ``{}``, no BentoML.

    bentoml serve benchmarks.floors:Empty --port 3001
    python -m uvicorn benchmarks.floors:app --port 3002 --no-access-log
"""

from __future__ import annotations

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


@bentoml.service(name="empty")
class Empty:
    @bentoml.api(route="/recommend")
    async def recommend(self, customer_id: int = 0, k: int = 10) -> dict:
        return {}


async def _empty(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({})


app = Starlette(routes=[Route("/recommend", _empty, methods=["POST"])])
