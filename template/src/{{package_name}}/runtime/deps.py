"""FastAPI dependencies that hand routes what the running service owns."""

from typing import Annotated

from fastapi import Depends, Request

from .readmodel import ReadModel
from .service import Service


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def get_readmodel(request: Request) -> ReadModel:
    return get_service(request).readmodel


ServiceDep = Annotated[Service, Depends(get_service)]
ReadModelDep = Annotated[ReadModel, Depends(get_readmodel)]
