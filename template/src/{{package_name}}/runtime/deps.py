"""FastAPI dependencies that hand routes what the running service owns."""

from typing import Annotated

from fastapi import Depends, Request

from ..settings import Settings
from .commands import CommandBus
from .readmodel import ReadModel
from .service import Service


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def get_readmodel(request: Request) -> ReadModel:
    return get_service(request).readmodel


def get_commands(request: Request) -> CommandBus:
    return get_service(request).commands


def get_settings(request: Request) -> Settings:
    settings = get_service(request).settings
    assert isinstance(settings, Settings), "create_app() takes the service's own Settings"
    return settings


ServiceDep = Annotated[Service, Depends(get_service)]
ReadModelDep = Annotated[ReadModel, Depends(get_readmodel)]
CommandsDep = Annotated[CommandBus, Depends(get_commands)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
