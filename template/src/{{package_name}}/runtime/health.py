"""Liveness and readiness. Liveness never depends on Kafka or Redis: the process is serving."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from .deps import ServiceDep

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/ready", responses={503: {"description": "Not ready; the body says why"}})
async def ready(service: ServiceDep) -> JSONResponse:
    is_ready, body = await service.readiness()
    return JSONResponse(body, status_code=200 if is_ready else 503)
