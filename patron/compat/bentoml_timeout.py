"""BentoML's per-request timeout, made to let go of its timer once the request is answered.

What it relies on (BentoML 1.4.39, ``bentoml/_internal/server/http/traffic.py``): the class
``TimeoutMiddleware`` with the attributes ``app`` and ``timeout`` and the method
``_set_timer_out(waiter)``, whose ``__call__`` is replaced here.

Why: as shipped, ``__call__`` schedules ``loop.call_later(self.timeout, ...)`` for every request and
never cancels it, so each request's timer, future and context stay alive for the whole timeout
(60 s by default): at 2,000 requests a second, some 700,000 objects that every full garbage
collection walks (pauses of 100 ms and more, growing with the load), and memory given back only a
minute later. The replacement behaves the same and cancels the timer as soon as the request has
its answer or has failed.

Upstream: no BentoML issue reports the timer (searched to July 2026). The design comes from
https://github.com/bentoml/BentoML/pull/4754 ("cancel the timeout check at the first send", which
resolves the waiter but keeps the timer); the open https://github.com/bentoml/BentoML/pull/5670
changes the middleware again and still does not cancel it. Releases up to 1.4.40 are unchanged.
The regression test is ``tests/test_service.py::test_the_request_timeout_lets_go_of_its_timer_once_answered``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from patron.compat import require

KNOWN_VERSIONS = ("1.4.39",)
VERSION = require("bentoml", KNOWN_VERSIONS, __name__)

from bentoml._internal.server.http import traffic  # noqa: E402  (only once the version is known)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def cancel_request_timers() -> None:
    """Replace ``TimeoutMiddleware.__call__`` with one that cancels its timer (idempotent)."""
    if getattr(traffic.TimeoutMiddleware.__call__, "_cancels_timer", False):
        return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: dict) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            try:
                await waiter
            except asyncio.TimeoutError:
                if fut.cancel():
                    from starlette.responses import JSONResponse

                    resp = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504)
                    await resp(scope, receive, send)
            else:
                timer.cancel()  # answered: the timeout no longer applies
                await fut
        finally:
            timer.cancel()

    __call__._cancels_timer = True  # type: ignore[attr-defined]
    traffic.TimeoutMiddleware.__call__ = __call__  # type: ignore[method-assign]
