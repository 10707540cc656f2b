"""Read-your-writes: a consistency token from a command to the queries after it.

The service that handles a command replies with where the Fact Events it published landed
(topic, partition, offset). Of those, the ones on topics this service projects become the
command's consistency token (`CommandStatus.consistency_token`), opaque to the frontend. A query
that sends it back in the `Consistency-Token` header is answered once the read model has passed
those positions: the Fact Events are applied, or, where one was dead-lettered or parked instead,
the answer says so (409) rather than present the read model as current. A read model still behind
them after CONSISTENCY_WAIT_S answers 503 with Retry-After, never stale data as fresh.

The read model stores, per partition, the next offset to apply, committed with the writes; an
event it did not apply is noted beside it (keyspace.unapplied), in the same commit.
"""

import asyncio
import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import TopicPartition
from fastapi import Request

from .readmodel import Queries

if TYPE_CHECKING:  # service.py imports what imports this module
    from .service import Service

HEADER = "consistency-token"
_HEADER_RAW = HEADER.encode()  # ASGI header names are lowercase bytes
_PREFIX = "ct1."
MAX_POSITIONS = 64  # a command publishes a few Fact Events; a token is a header
_POLL_FIRST_S, _POLL_MAX_S = 0.005, 0.1


class InvalidTokenError(ValueError):
    """A Consistency-Token header this service did not hand out: 400."""


class NotAppliedError(Exception):
    """409: an event behind the token was dead-lettered or parked, not applied."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        super().__init__(
            "the command's effect is not in the read model: "
            + "; ".join(
                f"{e['topic']}[{e['partition']}]@{e['offset']} {e['outcome']}" for e in events
            )
        )
        self.events = events


class NotYetError(Exception):
    """503: the read model had not reached the token within CONSISTENCY_WAIT_S."""

    def __init__(self, reason: str, behind: list[dict[str, Any]]) -> None:
        super().__init__(reason)
        self.behind = behind


class TooManyWaitingError(NotYetError):
    """503 at once: CONSISTENCY_MAX_WAITING queries of this instance wait already."""


@dataclass
class Waiting:
    """The queries of one instance waiting on a consistency token: each holds a request (and its
    connection) for up to CONSISTENCY_WAIT_S, so at most `limit` at once."""

    limit: int
    now: int = 0


@dataclass(frozen=True)
class Token:
    """Positions of Fact Events: (topic, partition, offset)."""

    positions: tuple[tuple[str, int, int], ...]

    @classmethod
    def of(cls, positions: Iterable[tuple[str, int, int]], projected: Iterable[str]) -> "Token":
        """The positions on the `projected` topics, the latest per partition."""
        topics = set(projected)
        latest: dict[tuple[str, int], int] = {}
        for topic, partition, offset in positions:
            if topic in topics:
                latest[topic, partition] = max(offset, latest.get((topic, partition), -1))
        return cls(tuple((t, p, o) for (t, p), o in sorted(latest.items())))

    def encode(self) -> str:
        packed = orjson.dumps([list(position) for position in self.positions])
        return _PREFIX + base64.urlsafe_b64encode(packed).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str) -> "Token":
        if not text.startswith(_PREFIX) or len(text) > 8 * 1024:
            raise InvalidTokenError("not a consistency token of this service")
        body = text[len(_PREFIX) :]
        try:
            raw = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (binascii.Error, ValueError):
            raise InvalidTokenError("not a consistency token of this service") from None
        if not isinstance(raw, list) or len(raw) > MAX_POSITIONS:
            raise InvalidTokenError("not a consistency token of this service")
        positions = []
        for item in raw:
            match item:
                case [str(topic), int(partition), int(offset)] if partition >= 0 and offset >= 0:
                    positions.append((topic, partition, offset))
                case _:
                    raise InvalidTokenError("not a consistency token of this service")
        return cls(tuple(positions))


async def reached(queries: Queries, token: Token, within_s: float, waiting: Waiting) -> None:
    """Return once the read model has applied what `token` names; NotAppliedError if it passed
    an event of it without applying it, NotYetError if it is still behind after `within_s`, or
    at once (TooManyWaitingError) when `waiting` is full."""
    wanted = {TopicPartition(t, p): o for t, p, o in token.positions}
    behind = await _behind(queries, wanted)
    if behind:
        if waiting.now >= waiting.limit:
            raise TooManyWaitingError(
                f"{waiting.limit} queries already wait for the read model here"
                " (CONSISTENCY_MAX_WAITING); retry",
                behind,
            )
        waiting.now += 1
        try:
            await _wait(queries, wanted, within_s)
        finally:
            waiting.now -= 1
    notes = await queries.unapplied(token.positions)
    missed = []
    for (topic, partition, offset), note in zip(token.positions, notes, strict=True):
        if note is None:
            continue
        noted_offset, _, why = note.decode(errors="replace").partition(" ")
        if noted_offset == str(offset):  # the ring's slot may hold another offset's note
            outcome, _, reason = why.partition(": ")
            missed.append(
                {
                    "topic": topic,
                    "partition": partition,
                    "offset": offset,
                    "outcome": outcome,
                    "reason": reason,
                }
            )
    if missed:
        raise NotAppliedError(missed)


async def _behind(queries: Queries, wanted: dict[TopicPartition, int]) -> list[dict[str, Any]]:
    """The positions of `wanted` the read model has not passed yet."""
    stored = await queries.positions(list(wanted))
    return [
        {"topic": tp.topic, "partition": tp.partition, "offset": offset, "at": stored[tp]}
        for tp, offset in wanted.items()
        if (stored[tp] or 0) <= offset  # a stored position is the next offset to apply
    ]


async def _wait(queries: Queries, wanted: dict[TopicPartition, int], within_s: float) -> None:
    """Poll, more slowly as it goes, until the read model has passed `wanted`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    pause = _POLL_FIRST_S
    while True:
        await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
        pause = min(pause * 2, _POLL_MAX_S)
        behind = await _behind(queries, wanted)
        if not behind:
            return
        if loop.time() >= deadline:
            reason = f"the read model has not reached the consistency token in {within_s:g} s"
            raise NotYetError(f"{reason}; retry", behind)


async def consistent_read(request: Request) -> None:
    """Every API route's: with a Consistency-Token header, answer only once the read model has
    applied what it names (CONSISTENCY_WAIT_S at most). Most queries send none: the raw headers
    are scanned for it, without building the request's header mapping."""
    raw = next((value for name, value in request.scope["headers"] if name == _HEADER_RAW), None)
    if raw is None:
        return
    token = Token.decode(raw.decode("latin-1"))
    service: Service = request.app.state.service
    try:
        waiting = service.commands.waiting  # shared with commands that wait until applied
        await reached(service.queries, token, service.settings.consistency_wait_s, waiting)
    except TooManyWaitingError:
        service.instruments.consistency_refused.inc()
        raise
