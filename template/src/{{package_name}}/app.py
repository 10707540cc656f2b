"""The ASGI application. Build it with `create_app(settings)`; nothing here runs at import time."""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from redis.exceptions import RedisError

from . import api
from .handlers import HANDLERS
from .projections import REGISTRY
from .runtime import asyncapi, health, service
from .runtime.commands import http as command_routes
from .runtime.commands.handling import Handlers
from .runtime.commands.sending import OutgoingCommand
from .runtime.guard import RequestGuard
from .runtime.observability import metrics
from .runtime.observability.http import HttpTelemetry
from .runtime.observability.instruments import Instruments
from .runtime.projection import Registry
from .runtime.readmodel import InvalidCursorError
from .settings import Settings


def create_app(
    settings: Settings | None = None,
    registry: Registry = REGISTRY,
    handlers: Handlers = HANDLERS,
    commands: Sequence[OutgoingCommand[Any]] = api.COMMANDS,
) -> FastAPI:
    """The app; `registry` and `handlers` are what its consumers run, `commands` what its routes
    send (tests pass their own)."""
    settings = settings or Settings()
    instruments = Instruments()
    # Built once, up front: contracts that contradict each other stop the app from starting.
    contracts = contracts_document(settings, registry, handlers, commands)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service.running(settings, registry, handlers, instruments) as running:
            app.state.service = running
            app.state.metrics = metrics.registry_for(running)
            yield

    # /docs and /redoc load Swagger UI's and ReDoc's scripts and styles from this service, not a
    # CDN, so they work where the service runs without internet access.
    app = FastAPIOffline(
        title=settings.service_name,
        lifespan=lifespan,
        responses={
            413: {"description": "Body over MAX_REQUEST_BYTES"},
            414: {"description": "URL too long"},
            503: {"description": "The read model (Redis) is unavailable; retry later"},
        },
        # Swagger UI would send the OpenAPI document to an online validator for its badge.
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_request_bytes)
    app.add_middleware(HttpTelemetry, instruments=instruments)  # outermost: counts refusals too
    app.add_exception_handler(RedisError, _read_model_unavailable)
    app.add_exception_handler(TimeoutError, _read_model_unavailable)  # no free connection in time
    app.add_exception_handler(InvalidCursorError, _bad_cursor)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    for router in api.ROUTERS:  # first: routes are matched in order, and queries are most
        app.include_router(router)
    app.include_router(health.router)
    app.include_router(command_routes.router)
    app.include_router(metrics.router)

    @app.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi_json() -> JSONResponse:
        """This service's Kafka contracts (AsyncAPI 3.0), as `contracts asyncapi` prints them."""
        return JSONResponse(contracts)

    return app


def contracts_document(
    settings: Settings,
    registry: Registry = REGISTRY,
    handlers: Handlers = HANDLERS,
    commands: Sequence[OutgoingCommand[Any]] = api.COMMANDS,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the service's contracts (GET /asyncapi.json)."""
    return asyncapi.document(settings, registry, handlers, commands)


async def _read_model_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Redis is the only source of answers: without it, say so rather than fail obscurely (the
    error's class, not its text, which names Redis' address)."""
    detail = f"read model unavailable ({type(exc).__name__}); retry later"
    return JSONResponse({"detail": detail}, status_code=503, headers={"retry-after": "1"})


async def _bad_cursor(request: Request, exc: Exception) -> JSONResponse:
    detail = [{"type": "cursor", "loc": ["query", "after"], "msg": str(exc)[:200]}]
    return JSONResponse({"detail": detail}, status_code=422)


# A refused value is echoed back only when short: a 422 must not hand a megabyte back.
_ECHO_BYTES = 100


async def _invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = []
    for error in exc.errors():
        shown = {"type": error["type"], "loc": list(error["loc"]), "msg": error["msg"]}
        try:
            echo = orjson.dumps(error.get("input"), default=repr)
        except TypeError:  # e.g. a string with an unpaired surrogate: nothing to echo
            echo = b""
        if 0 < len(echo) <= _ECHO_BYTES:
            shown["input"] = orjson.Fragment(echo)
        detail.append(shown)
    return Response(orjson.dumps({"detail": detail}), 422, media_type="application/json")
