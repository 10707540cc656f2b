"""HTTP telemetry, as ASGI middleware: requests counted and timed by route template, and the
caller's trace context (`traceparent`) made current, so the commands a request sends carry it."""

import time
from typing import Any

from opentelemetry import context
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import tracing
from .instruments import Instruments


class HttpTelemetry:
    def __init__(self, app: ASGIApp, instruments: Instruments) -> None:
        self.app = app
        self.instruments = instruments

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
            (name.decode("latin-1"), value) for name, value in scope["headers"]
        )
        token = None if carried is None else context.attach(carried)
        start = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            if token is not None:
                context.detach(token)
            route: Any = scope.get("route")  # set by the router once it matched one
            template = getattr(route, "path", "unmatched")
            method = scope["method"]
            self.instruments.http_requests.labels(method, template, str(status)).inc()
            self.instruments.http_seconds.labels(method, template).observe(
                time.perf_counter() - start
            )
