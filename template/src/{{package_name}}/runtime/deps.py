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


async def get_readmodel(request: Request) -> ReadModel:
    return _service(request).readmodel


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
