"""FastAPI dependencies that hand routes what the running service owns.

They are `async def` on purpose: FastAPI runs plain `def` dependencies in a thread pool, a hand-off
that costs more than the Redis GET a query makes. Routes read through `Queries` (read-only); the
read model itself, with its commits and version changes, stays with the machinery.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from .auth import PrincipalDep
from .commands.sending import CommandBus
from .deprecation import deprecated
from .readmodel import Queries
from .service import Service
from .settings import ServiceSettings

SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def get_service(request: Request) -> Service:
    return _service(request)


async def get_queries(request: Request) -> Queries:
    return _service(request).queries


async def get_commands(request: Request, principal: PrincipalDep) -> CommandBus:
    """The command bus, sending on behalf of the caller: a route that sends commands needs a
    valid bearer token (unless AUTH_DISABLED)."""
    return _service(request).commands.acting_for(principal)


def settings_dependency(cls: type[SettingsT]) -> Callable[[Request], Awaitable[SettingsT]]:
    """A dependency giving routes the running service's settings as `cls`, the service's own
    Settings class (settings.py declares `SettingsDep` with it)."""

    async def get_settings(request: Request) -> SettingsT:
        settings = _service(request).settings
        if not isinstance(settings, cls):
            raise TypeError(f"create_app() was given {type(settings).__name__}, not {cls.__name__}")
        return settings

    return get_settings


ServiceDep = Annotated[Service, Depends(get_service)]
QueriesDep = Annotated[Queries, Depends(get_queries)]
CommandsDep = Annotated[CommandBus, Depends(get_commands)]
SettingsDep = Annotated[ServiceSettings, Depends(settings_dependency(ServiceSettings))]


# Deprecated for one release: they gave the whole read model; now its queries, which answer the
# same reads. Use QueriesDep.
def readmodel_of(request: Request) -> Queries:
    deprecated("readmodel_of(request) and ReadModelDep", "QueriesDep")
    return _service(request).queries


async def get_readmodel(request: Request) -> Queries:
    return readmodel_of(request)


ReadModelDep = Annotated[Queries, Depends(get_readmodel)]
