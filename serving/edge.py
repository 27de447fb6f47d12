"""The edge of the service, as plain ASGI middleware in front of BentoML's routes: one request
discipline for every client, with or without a key.

Everything a client can get wrong is answered here with a 4xx that says what was expected, before
any model code runs, in one shape (``{"error": ..., "detail": [...]}``):

* 400 for more or fewer than one ``X-API-Key`` header, a malformed ``Content-Length``, malformed
  or too deeply nested JSON (NaN and Infinity are not JSON);
* 401 without a known key, 403 for a key of another scope, 404 for no such endpoint (listing only
  the endpoints the caller may call), 405 for another method;
* 408 for a body not received within :data:`BODY_TIMEOUT`, 413 for a body over its endpoint's
  limit (checked against ``Content-Length`` before reading, and while reading);
* 415 for a body that is not declared as JSON or is compressed;
* 422 for a body that breaks the endpoint's schema.

The body BentoML then parses is the one validated here, written out again as plain JSON, so
BentoML never refuses (and logs) a body the edge let through; an error answer that does not come
from Patron (an unexpected 5xx of the framework) is replaced by a plain one, without the
framework's names and versions. Large bodies are parsed in a worker thread. Request metrics are
recorded here, by route (serving/metrics.py). Written as raw ASGI rather than Starlette's
BaseHTTPMiddleware, which costs a task and a copy per request on the hot path.

Keys are compared in constant time (their SHA-256 digests, all of them, every time) and never
logged; request bodies are never logged either. The request head itself (size, time to arrive,
number of connections) is limited before it reaches the edge: patron/compat/uvicorn_http.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio
from pydantic import ValidationError

from patron.serving.metrics import route_metrics

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_DEPTH = 8  # the deepest valid request is an object holding a list
BODY_TIMEOUT = 10.0  # seconds for a whole body to arrive once its head has
THREAD_PARSE_BYTES = 64 * 1024  # bodies from this size on are parsed off the event loop
# BentoML's probes: anyone may call them (what they say holds no customer data).
PROBES = frozenset({"/livez", "/readyz", "/healthz"})
JSON_TYPES = (b"application/json",)
KEY_HEADER = b"x-api-key"
# Where the edge tells the endpoint which key called it: the key's id, never the key.
KEY_ID = "patron.key_id"
# Patron's own error answers carry this header to the edge (which removes it): any other error
# answer is the framework's.
MARK = b"x-patron-answer"


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id(key_digest: bytes) -> str:
    """A short, non-secret name of a key (recorded with what the key did)."""
    return key_digest.hex()[:12]


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, without recursion, stopping past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            break
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def describe(exc: ValidationError) -> list[str]:
    """What was wrong with each field, without echoing the values sent (they may be personal data)."""
    out = []
    for e in exc.errors(include_input=False, include_url=False, include_context=False):
        where = ".".join(str(p) for p in e["loc"]) or "body"
        out.append(f"{where}: {e['msg']}")
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_json(body: bytes) -> Any:
    """Strict JSON: NaN and Infinity are refused; a UTF-8 byte order mark is ignored (RFC 8259 allows it)."""
    return json.loads(body or b"{}", parse_constant=_no_constant)


def answer(status: int, error: str, detail: Iterable[str] = (), headers: Mapping[str, str] | None = None) -> tuple[dict, dict]:
    """The start and body messages of an answer in the service's one error shape."""
    body = json.dumps({"error": error, "detail": list(detail)}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (MARK, b"1")]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http.response.start", "status": status, "headers": raw}, {"type": "http.response.body", "body": body}


async def _reply(send: Send, status: int, error: str, detail: Iterable[str] = (), headers: Mapping[str, str] | None = None) -> None:
    start, body = answer(status, error, detail, headers)
    await send(start)
    await send(body)


class Refused(Exception):
    def __init__(self, status: int, error: str, detail: Iterable[str] = (), headers: Mapping[str, str] | None = None):
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, list(detail), dict(headers or {})


class Edge:
    """ASGI middleware: ``Edge(app, endpoints={path: Endpoint}, keys={scope: [key, ...]})``.

    ``endpoints`` are the service's contract (serving/schemas.py ENDPOINTS: scope, request model,
    body limit). Without ``keys``, they come from the PATRON_*_KEYS settings; with none configured
    every call is refused (401), never let through. ``routes`` are extra open routes served by
    the edge itself (path -> (body, content type)).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        endpoints: Mapping[str, Any],
        keys: Mapping[str, Iterable[str]] | None = None,
        openapi: Mapping | None = None,
        body_timeout: float = BODY_TIMEOUT,
    ) -> None:
        self.app = app
        self.body_timeout = body_timeout
        self.openapi = json.dumps(openapi).encode() if openapi is not None else None
        if keys is None:  # read when the server builds its app, never at import
            from patron.settings import PatronSettings

            keys = PatronSettings().api_keys()
        self.endpoints = dict(endpoints)
        # every (digest, scope) pair; a request's key is compared with all of them
        self.digests = [(digest(k), scope) for scope, ks in keys.items() for k in ks]
        self.metrics = route_metrics([*self.endpoints, *PROBES, "/metrics", "/docs.json"])

    def scope_of(self, key: str | None) -> tuple[set[str], bytes | None]:
        if not key:
            return set(), None
        given = digest(key)
        found = set()
        for d, scope in self.digests:
            if hmac.compare_digest(given, d):  # no early exit: the same work for every key
                found.add(scope)
        return found, given

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/") or "/"
        endpoint = self.metrics.endpoint(path)
        started = time.perf_counter()
        status = 500
        replaced = False  # an error answer of the framework's own, being swallowed

        async def send_out(message: dict) -> None:
            nonlocal status, replaced
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", [])
                if status >= 400 and (MARK, b"1") not in headers and endpoint not in PROBES:
                    # not a Patron answer: the framework's own error page or traceback text, which
                    # would name its classes and versions; the client gets a plain error instead
                    log.error("the framework answered %s on %s on its own; replaced by a plain error", status, endpoint)
                    replaced = True
                    start, body = answer(status if status < 500 else 500, "the service could not answer this request")
                    await send(start)
                    await send(body)
                    return
                # no banner: which framework and version answers is nobody's business
                message = {**message, "headers": [h for h in headers if h[0] not in (MARK, b"server")]}
            elif replaced:
                return
            await send(message)

        gauge = self.metrics.in_progress.labels(endpoint=endpoint)
        gauge.inc()
        try:
            await self._handle(scope, path, receive, send_out)
        except Refused as r:
            await _reply(send_out, r.status, r.error, r.detail, r.headers)
        finally:
            gauge.dec()
            self.metrics.observe(endpoint, status, time.perf_counter() - started)

    async def _handle(self, scope: Scope, path: str, receive: Receive, send: Send) -> None:
        if path in PROBES:
            await self.app(scope, receive, send)
            return
        if path in ("/metrics", "/docs.json") and scope["method"] in ("GET", "HEAD"):
            if path == "/metrics":
                from patron.serving.metrics import exposition

                body, ctype = await anyio.to_thread.run_sync(exposition)
            elif self.openapi is not None:
                body, ctype = self.openapi, "application/json"
            else:
                raise Refused(404, "no API document")
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        keys = [v for k, v in scope["headers"] if k == KEY_HEADER]
        if len(keys) > 1:
            raise Refused(400, "send exactly one X-API-Key header", [f"got {len(keys)}"])
        granted, given = self.scope_of(keys[0].decode("latin-1") if keys else None)
        if not granted:
            raise Refused(401, "missing or unknown API key: send it in the X-API-Key header", headers={"www-authenticate": "ApiKey"})
        contract = self.endpoints.get(path)
        if contract is None:
            mine = sorted(p for p, e in self.endpoints.items() if e.scope in granted)
            raise Refused(404, "no such endpoint", [f"endpoints of this key: {', '.join(mine)}"])
        if contract.scope not in granted:
            raise Refused(403, f"this API key may not call {path}: it needs the {contract.scope} scope")
        if scope["method"] != "POST":
            raise Refused(405, f"{path} takes POST with a JSON body", headers={"allow": "POST"})
        headers = self._headers(scope)
        self._check_content(headers, contract.max_body)
        body = await self._read_body(receive, contract.max_body, self.body_timeout)
        if body is None:
            return  # the client went away
        data = await self._parse(body, contract, path)
        canonical = json.dumps(data, separators=(",", ":")).encode()
        scope = dict(scope)
        scope[KEY_ID] = key_id(given) if given else None
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length", b"content-encoding")]
        scope["headers"] += [(b"content-type", b"application/json"), (b"content-length", str(len(canonical)).encode())]
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": canonical, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _headers(scope: Scope) -> dict[bytes, list[bytes]]:
        out: dict[bytes, list[bytes]] = {}
        for k, v in scope["headers"]:
            out.setdefault(k, []).append(v)
        return out

    @staticmethod
    def _check_content(headers: dict[bytes, list[bytes]], max_body: int) -> None:
        types = headers.get(b"content-type", [])
        ctype = types[0].split(b";")[0].strip().lower() if len(types) == 1 else b""
        if ctype not in JSON_TYPES:
            raise Refused(415, "send the request as JSON (Content-Type: application/json)",
                          [f"got {len(types)} Content-Type header(s)" if len(types) != 1 else "got another content type"])
        encodings = [e.strip().lower() for v in headers.get(b"content-encoding", []) for e in v.split(b",")]
        if any(e not in (b"", b"identity") for e in encodings):
            raise Refused(415, "compressed request bodies are not accepted: send plain JSON (no Content-Encoding)")
        lengths = headers.get(b"content-length", [])
        if len(lengths) > 1 or (lengths and not lengths[0].strip().isdigit()):
            raise Refused(400, "malformed Content-Length header")
        if lengths and int(lengths[0]) > max_body:
            raise Refused(413, f"request body over {max_body} bytes, the limit of this endpoint")

    @staticmethod
    async def _read_body(receive: Receive, max_body: int, timeout: float) -> bytes | None:
        body = bytearray()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    body += message.get("body", b"")
                    if len(body) > max_body:
                        raise Refused(413, f"request body over {max_body} bytes, the limit of this endpoint")
                    if not message.get("more_body"):
                        return bytes(body)
        except TimeoutError:
            raise Refused(408, f"the request body was not received within {timeout:g} s") from None

    @staticmethod
    async def _parse(body: bytes, contract: Any, path: str) -> Any:
        """Parse and validate a body: on the event loop when small, in a worker thread when large."""

        def check() -> tuple[Any, Refused | None]:
            try:
                data = parse_json(body)
            except RecursionError:
                return None, Refused(400, "request body is nested too deeply")
            except (ValueError, UnicodeDecodeError) as exc:
                return None, Refused(400, "request body is not valid JSON", [str(exc).split(":")[0]])
            if not isinstance(data, dict):
                return None, Refused(422, "request body must be a JSON object", [f"got a JSON {type(data).__name__}"])
            if _depth(data, MAX_DEPTH) > MAX_DEPTH:
                return None, Refused(400, f"request body is nested deeper than {MAX_DEPTH} levels")
            try:
                contract.request.model_validate(data)
            except ValidationError as exc:
                return None, Refused(422, f"invalid request for {path}", describe(exc))
            return data, None

        data, refusal = await anyio.to_thread.run_sync(check) if len(body) >= THREAD_PARSE_BYTES else check()
        if refusal is not None:
            raise refusal
        return data
