"""The HTTP connection handling of the service's workers, with limits no client can talk past.

BentoML runs each worker on uvicorn with its defaults: request heads of any size (a 16 MiB header
is read whole, a 10 MiB API key before the 401), no deadline for a head that never ends (one byte a
second keeps a connection forever), and no cap on connections. This protocol is uvicorn's own
httptools protocol with three limits, answered before any application code runs:

* a request line and headers over :attr:`GuardedHttpToolsProtocol.max_head` bytes: 431, closed;
* a head not complete within :attr:`~GuardedHttpToolsProtocol.head_timeout` seconds of its first
  byte (or of the connection, when nothing comes): 408, closed;
* more than :attr:`~GuardedHttpToolsProtocol.max_connections` open connections: 503, closed.

What it relies on (uvicorn 0.54.0 with httptools 0.9.0): ``uvicorn.config.HTTP_PROTOCOLS``, the
mapping through which ``Config.load`` resolves its ``http="auto"`` protocol (BentoML builds the
worker's ``Config`` after loading the service module, so :func:`install`, called at that import,
is in time); and ``uvicorn.protocols.http.httptools_impl.HttpToolsProtocol``: its parser callbacks
(``on_url``, ``on_header``, ``on_headers_complete``, ``on_response_complete``), ``data_received``
(re-written here), ``transport``, ``connections`` and ``_unset_keepalive_if_required``.

Upstream: https://github.com/encode/uvicorn/issues/157 ("Further timeouts and resource limiting",
closed in 2026 without a head timeout); a head size limit for httptools was proposed in
https://github.com/encode/uvicorn/pull/1684 and closed unmerged (httptools' own buffer limit cannot
be set; uvicorn's h11 protocol has one, ``h11_max_incomplete_event_size``). BentoML passes none of
uvicorn's limits through (``_bentoml_impl/worker/service.py`` builds the ``Config``).
"""

from __future__ import annotations

import json
from asyncio import TimerHandle

from patron.compat import require

KNOWN_VERSIONS = ("0.54.0",)
VERSION = require("uvicorn", KNOWN_VERSIONS, __name__)
HTTPTOOLS_VERSION = require("httptools", ("0.9.0",), __name__)

import httptools  # noqa: E402
from uvicorn import config as uvicorn_config  # noqa: E402
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: E402

REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    max_head = 16 * 1024  # request line + headers; a real request's head is well under 2 KiB
    head_timeout = 10.0  # seconds from the first byte of a request (or the connection) to its end of head
    max_connections = 1024  # per worker

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # bytes received while waiting for the end of a head
        self._head_fields = 0  # bytes of the head's URL and fields, as parsed
        self._reading_head = True
        self._head_timer: TimerHandle | None = None
        self._refusal: int | None = None

    # -- limits
    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes == 0:
            self.transport.close()  # nothing was asked: close as an idle keep-alive connection is
        else:
            self._refuse(408, f"the request head was not complete within {self.head_timeout:g} s")

    def _refuse(self, status: int, message: str) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        body = json.dumps({"error": message, "detail": []}).encode()
        head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                % (status, REASONS[status], len(body)))
        self.transport.write(head + body)
        self.transport.close()

    # -- connection and parser callbacks
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(503, f"over {self.max_connections} open connections: retry later")
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._head_fields = 0
        if self._head_timer is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._head_fields += len(url)
        if self._head_fields > self.max_head:
            self._refusal = 431
            raise ValueError("request line too long")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_fields += len(name) + len(value) + 4
        if self._head_fields > self.max_head:
            self._refusal = 431
            raise ValueError("request head too large")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._head_bytes = 0
            self._arm()  # the next request's head, on a kept-alive connection

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, with the head's size counted before the parser buffers it
        self._unset_keepalive_if_required()
        if self._reading_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self._refusal is not None:
                self._refuse(self._refusal, f"request line and headers over {self.max_head} bytes")
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._reading_head and self._head_bytes > self.max_head:
            self._refuse(431, f"request line and headers over {self.max_head} bytes")


def install(*, max_head: int | None = None, head_timeout: float | None = None, max_connections: int | None = None) -> None:
    """Make uvicorn's ``http="auto"`` this protocol, with the given limits (idempotent)."""
    if max_head is not None:
        GuardedHttpToolsProtocol.max_head = max_head
    if head_timeout is not None:
        GuardedHttpToolsProtocol.head_timeout = head_timeout
    if max_connections is not None:
        GuardedHttpToolsProtocol.max_connections = max_connections
    uvicorn_config.HTTP_PROTOCOLS["auto"] = f"{__name__}:GuardedHttpToolsProtocol"
