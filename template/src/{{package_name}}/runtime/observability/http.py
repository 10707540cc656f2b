"""HTTP telemetry, as ASGI middleware: requests counted and timed by route template, and the
caller's trace context (`traceparent`) made current, so the commands a request sends carry it.

It runs on every query, so it does little: labelled metrics are looked up once per route and
status, and only the trace headers are decoded.
"""

import time
from typing import Any

from opentelemetry import context
from prometheus_client.metrics import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import tracing
from .instruments import Instruments

_TRACE_HEADERS = frozenset(name.encode() for name in tracing.HEADERS)


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

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
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
            self._count(scope["method"], getattr(route, "path", "unmatched"), status, elapsed)

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
