"""HTTP telemetry, as ASGI middleware: requests counted and timed by route template, the caller's
trace context (`traceparent`) made current, so the commands a request sends carry it, and every
answer's `Read-Model-Age` (seconds since the read model was last current; supervision.py).

It runs on every query, so it does little: labelled metrics are looked up once per route and
status, and only the trace headers are decoded.
"""

import time
from typing import Any

from opentelemetry import context
from prometheus_client.metrics import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..guard import SECURITY_HEADERS
from . import tracing
from .instruments import Instruments

_TRACE_HEADERS = frozenset(name.encode() for name in tracing.HEADERS)
# Label values come from these sets only, so no request can make a new metric series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpTelemetry:
    def __init__(self, app: ASGIApp, instruments: Instruments) -> None:
        self.app = app
        self.instruments = instruments
        self._counters: dict[tuple[str, str, int], Counter] = {}
        self._timers: dict[tuple[str, str], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # unless the app answers
        service = getattr(scope["app"].state, "service", None)

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = SECURITY_HEADERS
                if service is not None:  # how old the answer may be, in seconds
                    extra = [*extra, (b"read-model-age", service.freshness.age_header)]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        carried = tracing.context_of(
            (name.decode(), value) for name, value in scope["headers"] if name in _TRACE_HEADERS
        )
        token = None if carried is None else context.attach(carried)
        start = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            elapsed = time.perf_counter() - start
            if token is not None:
                context.detach(token)
            route: Any = scope.get("route")  # set by the router once it matched one
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self._count(method, getattr(route, "path", "unmatched"), status, elapsed)

    def _count(self, method: str, template: str, status: int, elapsed: float) -> None:
        counter = self._counters.get((method, template, status))
        if counter is None:
            counter = self.instruments.http_requests.labels(method, template, str(status))
            self._counters[method, template, status] = counter
        counter.inc()
        timer = self._timers.get((method, template))
        if timer is None:
            timer = self.instruments.http_seconds.labels(method, template)
            self._timers[method, template] = timer
        timer.observe(elapsed)
