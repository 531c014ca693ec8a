"""The server's gate: what is decided about a request before any of its body is read.

An ASGI middleware in front of every route, because a route's own checks run only after FastAPI has read and spooled
the body: a request without a valid key (where keys are set) or with a body over its route's limit is answered at
once, and a body that stalls is cut off instead of holding a connection and a worker for ever.

    key            every route that serves data (/identify, /labels, /v2/...) wants a known ``api-key`` where the
                   server has keys; /, /health and the API docs stay open (a load balancer probes /health)
    body limit     per route: /identify the photos of one observation, /v2/identify Pl@ntNet's 50 MB, others 64 KB;
                   from Content-Length at once, or as a chunked body's bytes pass it
    read timeouts  a body idle for ``idle_seconds`` or not complete within ``total_seconds`` is answered 408
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

from fastapi import HTTPException
from starlette.responses import JSONResponse

from graft.serving.keys import KeyRefused, KeyRing
from graft.serving.plantnet import MAX_TOTAL_BYTES, plantnet_error

OPEN_ROUTES = ("/", "/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
SMALL_BODY = 64 * 1024
MULTIPART_ROOM = 1024 * 1024  # headers and form fields around Pl@ntNet's 50 MB of images


@dataclass(frozen=True)
class GateRules:
    keys: KeyRing | None
    identify_bytes: int  # the photos of one observation (graft's /identify)
    idle_seconds: float = 15.0
    total_seconds: float = 120.0

    def body_limit(self, path: str) -> int:
        if path == "/identify":
            return self.identify_bytes
        if path.startswith("/v2/identify/"):
            return MAX_TOTAL_BYTES + MULTIPART_ROOM
        return SMALL_BODY


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Gate:
    """ASGI middleware applying :class:`GateRules` to every HTTP request."""

    def __init__(self, app, rules: GateRules):
        self.app, self.rules = app, rules

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        try:
            self._check_key(path, scope.get("query_string", b""))
            limit = self.rules.body_limit(path)
            declared = dict(scope["headers"]).get(b"content-length", b"")
            if declared.isdigit() and len(declared) < 20 and int(declared) > limit:
                raise _Refused(413, _too_large(int(declared), limit))
        except _Refused as refused:
            return await self._answer(path, refused, scope, receive, send)
        started, received, complete = time.monotonic(), 0, False

        async def guarded():
            """The route's receive while the body comes in (afterwards, e.g. listening for a disconnect during a
            slow answer, it is the server's own): HTTPException is what FastAPI lets through from body parsing
            (its handler answers in the caller's shape); anything else there would become a 400."""
            nonlocal received, complete
            if complete:
                return await receive()
            left = self.rules.total_seconds - (time.monotonic() - started)
            try:
                message = await asyncio.wait_for(receive(), max(0.0, min(self.rules.idle_seconds, left)))
            except TimeoutError:
                raise HTTPException(408, "the request body stalled or took too long; send it again",
                                    {"Connection": "close"}) from None
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, _too_large(received, limit), {"Connection": "close"})
            complete = message.get("type") != "http.request" or not message.get("more_body", False)
            return message

        return await self.app(scope, guarded, send)

    def _check_key(self, path: str, query: bytes) -> None:
        if self.rules.keys is None or path in OPEN_ROUTES or path.startswith("/docs"):
            return
        given = parse_qs(query.decode("latin-1")).get("api-key", [None])[0]
        try:
            self.rules.keys.check(given)
        except KeyRefused as refused:
            raise _Refused(refused.status, refused.message, refused.headers) from None

    @staticmethod
    async def _answer(path: str, refused: _Refused, scope, receive, send) -> None:
        body = plantnet_error(refused.status, refused.message) if path.startswith("/v2/") else \
            {"detail": refused.message}
        headers = {**refused.headers, "Connection": "close"}
        await JSONResponse(body, refused.status, headers)(scope, receive, send)


def _too_large(size: int, limit: int) -> str:
    return f"request body of {size:,} bytes or more; at most {limit:,} for this route; send fewer or smaller photos"
