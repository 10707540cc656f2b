"""Commands over HTTP: `GET /commands/{command_id}`, the status of a command this service sent, from
any instance; and the answer of a route that sends one (`command_response`)."""

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel

from ..auth import PrincipalDep
from ..deps import ServiceDep
from .sending import CommandBus, CommandStatus, SentCommand

router = APIRouter(prefix="/commands", tags=["commands"])

# A route's `wait` query parameter: how long its answer may wait for the command's reply.
CommandWait = Annotated[
    float | None, Query(gt=0, le=10, description="Seconds to wait for the reply")
]
# A route's `until` query parameter: what `wait` waits for.
CommandUntil = Annotated[
    Literal["replied", "applied"],
    Query(
        description="replied: the reply; applied: also the command's effect in this service's"
        " read model (the answer's `applied` says whether it got there within `wait`)"
    ),
]


class Accepted(BaseModel):
    """A command sent and not replied to yet: follow it at `status_url`."""

    command_id: str
    status: Literal["pending"] = "pending"
    status_url: str


# The answers of a route that sends a command: declare them with
# `@router.post(..., status_code=202, response_model=Accepted, responses=COMMAND_RESPONSES)`.
COMMAND_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": CommandStatus, "description": "The reply, when it came within `wait`"},
}


async def command_response(
    commands: CommandBus,
    sent: SentCommand,
    wait: float | None,
    until: Literal["replied", "applied"] = "replied",
) -> Response:
    """200 with the command's status once it is replied to within `wait` seconds (and, `until`
    applied, with whether its effect reached the read model in that time); else 202 with where to
    follow it."""
    started = time.monotonic()
    status = None if wait is None else await commands.wait(sent.command_id, wait)
    if status is None or status.status == "pending":
        accepted = Accepted(command_id=sent.command_id, status_url=f"/commands/{sent.command_id}")
        return Response(accepted.model_dump_json(), status_code=202, media_type="application/json")
    if until == "applied" and wait is not None:
        status = await commands.applied(status, max(0.0, wait - (time.monotonic() - started)))
    return Response(status.model_dump_json(), media_type="application/json")


@router.get(
    "/{command_id}",
    responses={404: {"description": "No such command of the caller's (or it expired)"}},
)
async def command_status(
    command_id: str, service: ServiceDep, principal: PrincipalDep
) -> CommandStatus:
    status = await service.commands.status(command_id)
    if status is None or not status.visible_to(principal):  # another's: as if it did not exist
        raise HTTPException(status_code=404, detail=f"command {command_id[:100]!r} not found")
    return status
