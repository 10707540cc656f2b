"""`GET /commands/{command_id}`: the status of a command this service sent, from any instance."""

from fastapi import APIRouter, HTTPException

from .commands import CommandStatus
from .deps import ServiceDep

router = APIRouter(prefix="/commands", tags=["commands"])


@router.get("/{command_id}", responses={404: {"description": "No such command (or expired)"}})
async def command_status(command_id: str, service: ServiceDep) -> CommandStatus:
    status = await service.commands.status(command_id)
    if status is None:
        raise HTTPException(status_code=404, detail=f"command {command_id!r} not found")
    return status
