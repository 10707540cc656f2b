"""FastAPI dependencies that hand routes what the running service owns.

They are `async def` on purpose: FastAPI runs plain `def` dependencies in a thread pool, a hand-off
that costs more than the Redis GET a query makes.
"""

from typing import Annotated

from fastapi import Depends, Request

from ..settings import Settings
from .commands import CommandBus
from .readmodel import ReadModel
from .service import Service


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def get_service(request: Request) -> Service:
    return _service(request)


def readmodel_of(request: Request) -> ReadModel:
    """The read model, for a hot query route that takes `request: Request` instead of
    ReadModelDep: FastAPI's dependency solving costs a route about 50 us of CPU per request, more
    than the Redis read it answers from (docs/benchmarks.md)."""
    return _service(request).readmodel


async def get_readmodel(request: Request) -> ReadModel:
    return readmodel_of(request)


async def get_commands(request: Request) -> CommandBus:
    return _service(request).commands


async def get_settings(request: Request) -> Settings:
    settings = _service(request).settings
    assert isinstance(settings, Settings), "create_app() takes the service's own Settings"
    return settings


ServiceDep = Annotated[Service, Depends(get_service)]
ReadModelDep = Annotated[ReadModel, Depends(get_readmodel)]
CommandsDep = Annotated[CommandBus, Depends(get_commands)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
