"""The edge of the service, as plain ASGI middleware in front of BentoML's routes: API keys and scopes,
body size, JSON well-formedness and the request schemas.

Everything a client can get wrong is answered here with a 4xx that says what was expected, before
any model code runs: 401 without a key, 403 for a key of another scope, 413 for a body over the
limit, 400 for malformed or too deeply nested JSON, 415 for a body that is not JSON, 422 for a
body that breaks the endpoint's schema. Written as raw ASGI rather than Starlette's
BaseHTTPMiddleware, which costs a task and a copy per request on the hot path.

Keys are compared in constant time (their SHA-256 digests, all of them, every time) and never
logged; request bodies are never logged either.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY = 1024 * 1024  # 1000 ids fit in a few KiB, 1000 events in about 250 KiB; nothing legitimate comes near this
MAX_DEPTH = 8  # the deepest valid request is an object holding a list
# Paths anyone may call: health probes, metrics, the API document and its viewer.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/schema.json", "/", "/docs"})
OPEN_PREFIXES = ("/static_content/",)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


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


async def _reply(send: Send, status: int, error: str, detail: Iterable[str] = (), headers: Mapping[str, str] | None = None) -> None:
    body = json.dumps({"error": error, "detail": list(detail)}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Edge:
    """ASGI middleware: ``Edge(app, scopes={path: scope}, models={path: Model}, keys={scope: [key, ...]})``.

    Without ``keys``, they come from the PATRON_*_KEYS settings; with none configured every call is
    refused (401), never let through.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        scopes: Mapping[str, str],
        models: Mapping[str, type[BaseModel]],
        keys: Mapping[str, Iterable[str]] | None = None,
        openapi: Mapping | None = None,
        max_body: int = MAX_BODY,
    ) -> None:
        self.app = app
        self.openapi = json.dumps(openapi).encode() if openapi is not None else None
        if keys is None:  # read when the server builds its app, never at import
            from patron.settings import PatronSettings

            keys = PatronSettings().api_keys()
        self.scopes = dict(scopes)
        self.models = dict(models)
        self.max_body = max_body
        # every (digest, scope) pair; a request's key is compared with all of them
        self.digests = [(digest(k), scope) for scope, ks in keys.items() for k in ks]

    def scope_of(self, key: str | None) -> set[str]:
        if not key:
            return set()
        given = digest(key)
        found = set()
        for d, scope in self.digests:
            if hmac.compare_digest(given, d):  # no early exit: the same work for every key
                found.add(scope)
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/") or "/"
        if path == "/docs.json" and self.openapi is not None:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(self.openapi)).encode())]})
            await send({"type": "http.response.body", "body": self.openapi})
            return
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        key = headers.get(b"x-api-key", b"").decode("latin-1")
        granted = self.scope_of(key)
        if not granted:
            await _reply(send, 401, "missing or unknown API key: send it in the X-API-Key header",
                         headers={"www-authenticate": "ApiKey"})
            return
        needed = self.scopes.get(path)
        if needed is None:
            await _reply(send, 404, f"no endpoint {scope['path']}", [f"endpoints: {', '.join(sorted(self.scopes))}"])
            return
        if needed not in granted:
            await _reply(send, 403, f"this API key may not call {path}: it needs the {needed} scope")
            return
        if scope["method"] != "POST":
            await _reply(send, 405, f"{path} takes POST with a JSON body", headers={"allow": "POST"})
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _reply(send, 413, f"request body over {self.max_body} bytes")
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await _reply(send, 413, f"request body over {self.max_body} bytes")
                return
            if not message.get("more_body"):
                break
        ctype = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if ctype.startswith(b"multipart/") or b"pickle" in ctype:
            await _reply(send, 415, "send the request as JSON (Content-Type: application/json)")
            return
        try:
            data = json.loads(body or b"{}")
        except RecursionError:
            await _reply(send, 400, "request body is nested too deeply")
            return
        except (ValueError, UnicodeDecodeError) as exc:
            await _reply(send, 400, "request body is not valid JSON", [str(exc).split(":")[0]])
            return
        if not isinstance(data, dict):
            await _reply(send, 422, "request body must be a JSON object", [f"got a JSON {type(data).__name__}"])
            return
        if _depth(data, MAX_DEPTH) > MAX_DEPTH:
            await _reply(send, 400, f"request body is nested deeper than {MAX_DEPTH} levels")
            return
        model = self.models.get(path)
        if model is not None:
            try:
                model.model_validate(data)
            except ValidationError as exc:
                await _reply(send, 422, f"invalid request for {path}", describe(exc))
                return
        # BentoML reads the body again; the content type is now known to be JSON whatever was sent
        if not body:
            body = bytearray(b"{}")
        scope = dict(scope)
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"] + [(b"content-type", b"application/json")]
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
