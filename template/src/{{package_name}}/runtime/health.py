"""Liveness and readiness. Liveness never depends on Kafka or Redis: it fails only when a loop of
the service was given up (supervision.py), which a restart of the process may cure."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from .deps import ServiceDep

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", responses={503: {"description": "A loop was given up; the body says which"}})
async def live(service: ServiceDep) -> JSONResponse:
    given_up = service.loops.given_up
    if given_up:
        return JSONResponse({"status": "dead", "given_up": given_up}, status_code=503)
    return JSONResponse({"status": "alive"})


@router.get("/ready", responses={503: {"description": "Not ready; the body says why"}})
async def ready(service: ServiceDep) -> JSONResponse:
    is_ready, body = await service.readiness()
    return JSONResponse(body, status_code=200 if is_ready else 503)
