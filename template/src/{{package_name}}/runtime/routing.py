"""API routers added to the app with a guard that runs before each of their routes.

FastAPI's `include_router` keeps an included router whole and matches each request through it
again, and a router-wide dependency is solved like any other: together about 15 of the 170 us a
query took (FastAPI 0.165). A router of plain routes is therefore added route by route to the app
itself, each route running the guard before its own handler (and so before its dependencies and
body). Any other router (one that includes routers, has websocket or mounted routes, a route class
or a lifespan of its own) is included as FastAPI does it, with the guard as its dependency: the
same checks, at FastAPI's cost.
"""

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.routing import APIRoute

Guard = Callable[[Request], Awaitable[None]]


def include_guarded(app: FastAPI, router: APIRouter, guard: Guard) -> None:
    """Serve `router`'s routes from `app`, each calling `guard(request)` first (which raises to
    refuse the request)."""
    if not _plain(router):
        app.include_router(router, dependencies=[Depends(guard)])
        return
    guarded = _guarded_route(guard)
    for route in router.routes:
        assert isinstance(route, APIRoute)
        app.router.add_api_route(
            route.path,
            route.endpoint,
            response_model=route.response_model,
            status_code=route.status_code,
            tags=route.tags,
            dependencies=route.dependencies,
            summary=route.summary,
            description=route.description,
            response_description=route.response_description,
            responses=route.responses,
            deprecated=route.deprecated,
            methods=route.methods,
            operation_id=route.operation_id,
            response_model_include=route.response_model_include,
            response_model_exclude=route.response_model_exclude,
            response_model_by_alias=route.response_model_by_alias,
            response_model_exclude_unset=route.response_model_exclude_unset,
            response_model_exclude_defaults=route.response_model_exclude_defaults,
            response_model_exclude_none=route.response_model_exclude_none,
            include_in_schema=route.include_in_schema,
            response_class=route.response_class,
            name=route.name,
            route_class_override=guarded,
            callbacks=route.callbacks,
            openapi_extra=route.openapi_extra,
            generate_unique_id_function=route.generate_unique_id_function,
            strict_content_type=route.strict_content_type,
            max_body_size=route.max_body_size,
            form_limits=route.form_limits,
        )


def _plain(router: APIRouter) -> bool:
    """Whether every route of `router` is an APIRoute as FastAPI makes it, and the router has
    nothing of its own to run at start-up or shutdown."""
    default_lifespan = type(APIRouter().lifespan_context)
    return (
        all(type(route) is APIRoute for route in router.routes)
        and type(router.lifespan_context) is default_lifespan
        and not router.on_startup
        and not router.on_shutdown
    )


def _guarded_route(guard: Guard) -> type[APIRoute]:
    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handle = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                await guard(request)
                return await handle(request)

            return guarded

    return GuardedRoute
