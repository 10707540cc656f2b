"""The HTTP edge, as ASGI middleware: what every request meets before a route.

- A body over MAX_REQUEST_BYTES is refused with 413 (by its Content-Length, or while it arrives,
  so a chunked body never sits in memory whole); a URL over MAX_URL_BYTES with 414, which also
  bounds what a 404 can echo back.
- A JSON body is parsed strictly (RFC 8259, as orjson reads it) before the route sees it: `NaN`,
  `Infinity` and unpaired surrogates, which Python's json module lets through and which cannot be
  published or answered, are refused with 422 and the reason.
- Every answer carries headers that keep browsers from sniffing, framing or leaking referrers
  (SECURITY_HEADERS; the HTTP telemetry middleware, which already handles each answer's start,
  adds them, so the hot path wraps `send` once).
"""

from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_URL_BYTES = 4096
# Methods whose body no route reads (Starlette reads a body only when a route asks for it).
_UNREAD = frozenset({"GET", "HEAD", "OPTIONS"})

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
]


class RequestGuard:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        url_bytes = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        if url_bytes > MAX_URL_BYTES:
            await _refuse(send, 414, f"the URL is longer than {MAX_URL_BYTES} bytes")
            return
        if scope["method"] in _UNREAD:  # the hot path: queries, whose bodies no route reads
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _refuse(send, 413, f"the body is over {self.max_body_bytes} bytes")
            return
        body = await _read_body(receive, self.max_body_bytes)
        if body is None:
            await _refuse(send, 413, f"the body is over {self.max_body_bytes} bytes")
            return
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if body and (content_type == b"application/json" or content_type.endswith(b"+json")):
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                # Shaped as FastAPI's own 422s, so clients read one kind of error.
                invalid = {"type": "json_invalid", "loc": ["body"], "msg": f"not JSON: {exc}"}
                await _refuse(send, 422, [invalid])
                return
        await self.app(scope, _replay(body, receive), send)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None once it grows past `limit`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then waits as the server would."""
    sent = False

    async def replaying() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replaying


async def _refuse(send: Send, status: int, detail: object) -> None:
    body = orjson.dumps({"detail": detail})
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
