"""The ASGI application. Build it with `create_app(settings)`; nothing here runs at import time."""

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from redis.exceptions import RedisError

from . import api
from .handlers import HANDLERS
from .projections import REGISTRY
from .runtime import asyncapi, health, service
from .runtime.auth import (
    ANONYMOUS,
    Authenticator,
    KeysUnavailableError,
    TokenRefusedError,
    ops_access,
    route_access,
)
from .runtime.commands import http as command_routes
from .runtime.commands.handling import Handlers
from .runtime.commands.sending import OutgoingCommand, RateLimitedError
from .runtime.consistency import (
    InvalidTokenError,
    NotAppliedError,
    NotYetError,
    consistent_read,
)
from .runtime.errors import StartupError
from .runtime.guard import RequestGuard
from .runtime.observability import metrics
from .runtime.observability.http import HttpTelemetry
from .runtime.observability.instruments import Instruments
from .runtime.projection import Registry
from .runtime.readmodel import InvalidCursorError
from .runtime.routing import include_guarded
from .settings import Settings

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    registry: Registry = REGISTRY,
    handlers: Handlers = HANDLERS,
    commands: Sequence[OutgoingCommand[Any]] = api.COMMANDS,
    routers: Sequence[APIRouter] = api.ROUTERS,
) -> FastAPI:
    """The app; `registry` and `handlers` are what its consumers run, `routers` its API and
    `commands` what its routes send (tests pass their own)."""
    settings = settings or Settings()
    if problem := settings.auth_problem():
        raise StartupError(problem)
    if settings.auth_disabled:
        log.warning(
            "AUTH_DISABLED=true: no route needs a bearer token, every caller is %r (local work"
            " only)",
            ANONYMOUS.subject,
        )
    instruments = Instruments()
    authenticator = Authenticator(settings)
    # Built once, up front: contracts that contradict each other stop the app from starting.
    contracts = contracts_document(settings, registry, handlers, commands)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with service.running(settings, registry, handlers, instruments) as running:
                app.state.service = running
                app.state.metrics = metrics.registry_for(running)
                yield
        finally:
            await authenticator.aclose()

    common: dict[str, Any] = {
        "title": settings.service_name,
        "lifespan": lifespan,
        "responses": {
            401: {"description": "No valid bearer token; the body says why"},
            413: {"description": "Body over MAX_REQUEST_BYTES"},
            414: {"description": "URL too long"},
            409: {
                "description": "The Consistency-Token's event was not applied; the body says why"
            },
            429: {"description": "Over COMMANDS_PER_MINUTE; retry after Retry-After seconds"},
            503: {
                "description": "The read model (Redis) is unavailable, or has not reached the"
                " Consistency-Token yet; retry after Retry-After seconds"
            },
        },
    }
    if settings.api_docs:
        # /docs and /redoc load Swagger UI's and ReDoc's scripts and styles from this service, not
        # a CDN, so they work where the service runs without internet access. Swagger UI would
        # send the OpenAPI document to an online validator for its badge.
        app = FastAPIOffline(**common, swagger_ui_parameters={"validatorUrl": None})
    else:
        app = FastAPI(**common, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.authenticator = authenticator
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_request_bytes)
    if settings.cors_origins:  # inside the telemetry: preflights are counted too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=settings.cors_credentials,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "authorization",
                "consistency-token",
                "content-type",
                "traceparent",
                "tracestate",
            ],
            expose_headers=["read-model-age", "retry-after"],
        )
    app.add_middleware(HttpTelemetry, instruments=instruments)  # outermost: counts refusals too
    app.add_exception_handler(RedisError, _read_model_unavailable)
    app.add_exception_handler(TimeoutError, _read_model_unavailable)  # no free connection in time
    app.add_exception_handler(InvalidCursorError, _bad_cursor)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(TokenRefusedError, _unauthenticated)
    app.add_exception_handler(KeysUnavailableError, _keys_unavailable)
    app.add_exception_handler(RateLimitedError, _rate_limited)
    app.add_exception_handler(InvalidTokenError, _invalid_consistency_token)
    app.add_exception_handler(NotAppliedError, _not_applied)
    app.add_exception_handler(NotYetError, _not_yet)
    for router in routers:  # first: routes are matched in order, and queries are most
        include_guarded(app, router, _api_guard)
    app.include_router(health.router)  # probes stay open
    include_guarded(app, command_routes.router, _api_guard)
    app.include_router(metrics.router, dependencies=[Depends(ops_access)])

    @app.get("/asyncapi.json", include_in_schema=False, dependencies=[Depends(ops_access)])
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


async def _api_guard(request: Request) -> None:
    """Every API route's, before the route's own dependencies: a bearer token where
    AUTH_REQUIRED_FOR says, a consistency token's wait where one is sent."""
    await route_access(request)
    await consistent_read(request)


async def _unauthenticated(request: Request, exc: Exception) -> JSONResponse:
    """401 with the reason, in the body and as RFC 6750 says in WWW-Authenticate."""
    reason = str(exc).replace('"', "'")
    challenge = f'Bearer error="invalid_token", error_description="{reason}"'
    return JSONResponse(
        {"detail": str(exc)}, status_code=401, headers={"www-authenticate": challenge}
    )


async def _keys_unavailable(request: Request, exc: Exception) -> JSONResponse:
    detail = f"cannot check the bearer token now: {exc}; retry later"
    return JSONResponse({"detail": detail}, status_code=503, headers={"retry-after": "10"})


async def _rate_limited(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RateLimitedError)
    retry_after = str(exc.retry_after_s)
    return JSONResponse({"detail": str(exc)}, status_code=429, headers={"retry-after": retry_after})


async def _invalid_consistency_token(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"Consistency-Token: {exc}"}, status_code=400)


async def _not_applied(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NotAppliedError)
    return JSONResponse({"detail": str(exc), "events": exc.events}, status_code=409)


async def _not_yet(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NotYetError)
    body = {"detail": str(exc), "behind": exc.behind}
    return JSONResponse(body, status_code=503, headers={"retry-after": "1"})


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
