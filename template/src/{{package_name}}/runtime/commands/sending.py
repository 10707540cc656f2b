"""Sending commands and tracking their replies: saga-style request/reply over Kafka.

A command is a CloudEvent published to another service's `.commands` topic, keyed by aggregate id,
with the extension attributes `correlationid` and `replyto` (this service's `.private.reply`).
Its status lives in Redis, so any instance answers for it and a reply consumed by any instance
completes it; pending commands survive restarts. Instances learn of completions through a Redis
channel, which wakes whoever waits for the reply.

Statuses: pending -> succeeded | failed (a reply came) or timed_out (none within COMMAND_TIMEOUT_S).
A reply for a command that is already complete (duplicate), timed out (late) or unknown is counted
and logged, never applied. A reply whose CloudEvent `source` is not the service the command went
to (forged) is dead-lettered, never applied.

A command is sent on behalf of the request's principal (`CommandBus.acting_for`): it carries the
principal's subject in its `principal` extension attribute, only that principal may read its
status, and each principal may send COMMANDS_PER_MINUTE commands a minute.
"""

import asyncio
import copy
import hashlib
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar, cast

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from redis.exceptions import RedisError

from ..auth import Principal
from ..consistency import (
    MAX_POSITIONS,
    NotAppliedError,
    NotYetError,
    Token,
    Waiting,
    reached,
)
from ..deadletter import DeadLetter, DeadLetters
from ..events import CloudEvent, InvalidEventError, decode
from ..kafka import Record, consume_each
from ..observability import tracing
from ..observability.instruments import Instruments
from ..projection import C, UnknownEventTypeError, type_of
from ..readmodel import ReadModel
from ..settings import ServiceSettings
from ..upstreams import GENERATED_WITH, THIS_SERVICE, Upstream, upstream_of

log = logging.getLogger(__name__)

D = TypeVar("D", bound=BaseModel)

REPLY_TYPE = "command.reply.v1"
Status = Literal["pending", "succeeded", "failed", "timed_out"]

# Completes a pending command once: returns what the reply turned out to be. A command sent before
# replies were checked has no `replier`: any source completes it.
_COMPLETE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'unknown' end
local replier = redis.call('HGET', KEYS[1], 'replier')
if replier and replier ~= '' and replier ~= ARGV[7] then return 'forged' end
if status == 'timed_out' then return 'late' end
if status ~= 'pending' then return 'duplicate' end
if tonumber(ARGV[4]) > tonumber(redis.call('HGET', KEYS[1], 'deadline')) then
  redis.call('HSET', KEYS[1], 'status', 'timed_out')
  return 'late'
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'result', ARGV[2], 'error', ARGV[3],
           'completed_at', ARGV[5], 'positions', ARGV[8])
redis.call('PUBLISH', KEYS[2], ARGV[6])
return 'completed'
"""

# Counts a principal's commands in the current minute; the count, and the seconds the minute lasts.
_COUNT = """
local sent = redis.call('INCR', KEYS[1])
if sent == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {sent, redis.call('TTL', KEYS[1])}
"""

# Marks a pending command whose deadline has passed as timed out; 1 if it did.
_EXPIRE = """
if redis.call('HGET', KEYS[1], 'status') == 'pending'
   and tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[1], 'deadline')) then
  redis.call('HSET', KEYS[1], 'status', 'timed_out')
  redis.call('PUBLISH', KEYS[2], ARGV[2])
  return 1
end
return 0
"""


class FactPosition(BaseModel):
    """Where a Fact Event its handler published landed."""

    model_config = ConfigDict(frozen=True)

    topic: str = Field(max_length=249)
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)


class Reply(BaseModel):
    """The data of a `command.reply.v1` event."""

    model_config = ConfigDict(frozen=True)

    status: Literal["succeeded", "failed"]
    result: dict[str, Any] | None = None
    error: str | None = None
    positions: list[FactPosition] = Field(
        default=[],
        max_length=1000,
        description="Where the Fact Events the handler published landed, in the order published:"
        " a service that projects them knows from these when it has applied the command's effect",
    )


class CommandStatus(BaseModel):
    """What `GET /commands/{command_id}` answers."""

    command_id: str
    type: str
    target: str
    correlation_id: str
    status: Status
    created_at: str
    completed_at: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    principal: str | None = Field(default=None, description="Who sent it (the token's subject)")
    consistency_token: str | None = Field(
        default=None,
        description="Send it as the Consistency-Token header of a query to be answered once the"
        " command's effect is in the read model",
    )
    applied: bool | None = Field(
        default=None,
        description="With until=applied: whether the command's effect was in the read model"
        " when this was answered",
    )

    _untraceable: bool = PrivateAttr(default=False)  # effects too spread out for a token

    def visible_to(self, principal: Principal) -> bool:
        """Only its sender reads a command's status (with authentication off, anyone; a command
        sent before commands carried their sender, any authenticated caller)."""
        return not principal.authenticated or self.principal in (None, principal.subject)


class RateLimitedError(Exception):
    """429: the principal has sent COMMANDS_PER_MINUTE commands this minute."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many commands: retry in {retry_after_s} s (COMMANDS_PER_MINUTE)")
        self.retry_after_s = retry_after_s


class ForgedReplyError(Exception):
    """A reply from another source than the service the command went to."""


@dataclass(frozen=True)
class OutgoingCommand(Generic[D]):
    """A command this service sends: its type, its data's contract and the setting naming the topic
    it goes to. Routes send through it, so what they send is what `api.COMMANDS` declares to
    /asyncapi.json and `contracts check`."""

    command_type: str
    data: type[D]
    topic_setting: str = "upstream_commands_topic"
    upstream: Upstream | None = None  # where it goes; topic_setting names the topic otherwise

    def topic(self, settings: ServiceSettings) -> str:
        if self.upstream is not None:
            return self.upstream.commands_topic(settings)
        topic = getattr(settings, self.topic_setting, None)
        if not isinstance(topic, str):
            name = self.command_type
            raise ValueError(f"{name}: settings have no topic field {self.topic_setting!r}")
        return topic

    def replier(self, settings: ServiceSettings) -> str | None:
        """The `source` its reply must come from: the service it goes to, where that is known."""
        if self.topic(settings) == settings.commands_topic:  # this service, however declared
            return settings.service_name
        upstream = self.upstream or {
            "commands_topic": THIS_SERVICE,
            "upstream_commands_topic": GENERATED_WITH,
        }.get(self.topic_setting)
        return None if upstream is None else upstream.event_source(settings)

    async def send(
        self,
        bus: "CommandBus",
        settings: ServiceSettings,
        key: str,
        data: D,
        *,
        correlation_id: str | None = None,
    ) -> "SentCommand":
        topic = self.topic(settings)
        return await bus.send(
            topic,
            self.command_type,
            key,
            data,
            correlation_id=correlation_id,
            replier=self.replier(settings),
        )


def command(contract: type[C]) -> OutgoingCommand[C]:
    """The command `contract` states, sent under its `TYPE` to the commands topic of the upstream
    that accepts it (its `UPSTREAM`)."""
    return OutgoingCommand(type_of(contract), contract, upstream=upstream_of(contract))


@dataclass(frozen=True)
class SentCommand:
    command_id: str
    correlation_id: str


class CommandBus:
    """Publishes commands, records their status and completes it from replies."""

    def __init__(
        self,
        readmodel: ReadModel,
        producer: AIOKafkaProducer,
        *,
        source: str,
        reply_topic: str,
        timeout_s: float,
        retention_s: int,
        per_minute: int = 0,
        projected: Iterable[str] = (),
        max_waiting: int = 100,
        instruments: Instruments | None = None,
    ) -> None:
        redis = self._redis = readmodel.redis
        self._keys = readmodel.keys
        self._queries = readmodel.queries
        self._producer = producer
        self._source = source
        self._reply_topic = reply_topic
        self._timeout_s = timeout_s
        self._retention_s = retention_s
        self._per_minute = per_minute
        self._projected = frozenset(projected)  # topics whose positions make consistency tokens
        # The queries and commands waiting on a consistency token (`?until=applied`) at once.
        self.waiting = Waiting(max_waiting)
        self._principal: Principal | None = None
        self._complete = redis.register_script(_COMPLETE)
        self._expire = redis.register_script(_EXPIRE)
        self._count = redis.register_script(_COUNT)
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.replies: Counter[str] = Counter()  # completed, duplicate, late, unknown, forged
        self._instruments = instruments or Instruments()

    def acting_for(self, principal: Principal) -> "CommandBus":
        """This bus, sending on behalf of `principal` (what a route's `CommandsDep` gives)."""
        bus = copy.copy(self)  # shares the waiters, counters and scripts
        bus._principal = principal
        return bus

    @property
    def channel(self) -> str:
        return self._keys.commands_done

    def _key(self, command_id: str) -> str:
        return self._keys.command(command_id)

    async def send(
        self,
        topic: str,
        command_type: str,
        key: str,
        data: BaseModel,
        *,
        correlation_id: str | None = None,
        replier: str | None = None,
    ) -> SentCommand:
        """Record the command as pending, then publish it; the reply completes it, if it comes
        from `replier` (when given: the CloudEvent source of the service it goes to)."""
        principal = self._principal
        sender = principal.subject if principal and principal.authenticated else None
        if sender is not None and self._per_minute:
            await self._admit(sender)
        command_id = uuid.uuid4().hex
        correlation_id = correlation_id or command_id
        now = time.time()
        await self._redis.hset(
            self._key(command_id),
            mapping={
                "command_id": command_id,
                "type": command_type,
                "target": topic,
                "correlation_id": correlation_id,
                "status": "pending",
                "created_at": _iso(now),
                "deadline": repr(now + self._timeout_s),
                "replier": replier or "",
                **({"principal": sender} if sender is not None else {}),
            },
        )
        await self._redis.expire(self._key(command_id), self._retention_s)
        extensions = {"correlationid": correlation_id, "replyto": self._reply_topic}
        if sender is not None:
            extensions["principal"] = sender
        event = CloudEvent.create(
            command_type,
            data,
            source=self._source,
            subject=key,
            id=command_id,
            time=_iso(now),
            extensions=extensions,
        )
        await self._producer.send_and_wait(
            topic, event.to_json(), key=key.encode(), headers=tracing.headers()
        )
        self._instruments.commands_sent.labels(command_type).inc()
        return SentCommand(command_id, correlation_id)

    async def _admit(self, sender: str) -> None:
        """RateLimitedError once `sender` has sent COMMANDS_PER_MINUTE commands this minute."""
        minute = math.floor(time.time() / 60)
        digest = hashlib.blake2b(sender.encode(), digest_size=12).hexdigest()
        sent, ttl = await self._count(keys=[self._keys.rate(digest, minute)], args=[60])
        if sent > self._per_minute:
            self._instruments.commands_limited.inc()
            raise RateLimitedError(max(1, int(ttl)))

    async def status(self, command_id: str) -> CommandStatus | None:
        key = self._key(command_id)
        if await self._expire(keys=[key, self.channel], args=[repr(time.time()), command_id]):
            self._instruments.command_outcomes.labels("timed_out").inc()
        fields = cast(dict[bytes, bytes], await self._redis.hgetall(key))
        if not fields:
            return None
        values = {name.decode(): value.decode() for name, value in fields.items()}
        result = values.pop("result", "")
        token = Token.of(map(tuple, orjson.loads(values.pop("positions", "[]"))), self._projected)
        # More partitions than a header carries (MAX_POSITIONS): no token rather than one no
        # query could send, and whether it is applied is not known.
        tokenable = len(token.positions) <= MAX_POSITIONS
        status = CommandStatus.model_validate(
            {
                **values,
                "result": orjson.loads(result) if result else None,
                "error": values.get("error") or None,
                "consistency_token": token.encode() if token.positions and tokenable else None,
            }
        )
        status._untraceable = not tokenable
        return status

    async def applied(self, status: CommandStatus, within_s: float) -> CommandStatus:
        """`status` with `applied`: whether its effect is in the read model within `within_s`
        (nothing to apply counts as applied; a failed command has no effect to apply)."""
        if status.status != "succeeded":
            return status.model_copy(update={"applied": False})
        if status.consistency_token is None:  # nothing here to apply, or unknown
            return status.model_copy(update={"applied": None if status._untraceable else True})
        try:
            token = Token.decode(status.consistency_token)
            await reached(self._queries, token, within_s, self.waiting)
        except (NotYetError, NotAppliedError):
            return status.model_copy(update={"applied": False})
        return status.model_copy(update={"applied": True})

    async def wait(self, command_id: str, timeout_s: float) -> CommandStatus | None:
        """The command's status once it is no longer pending, or after `timeout_s`."""
        done = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(command_id, []).append(done)
        try:
            current = await self.status(command_id)
            if current is None or current.status != "pending":
                return current
            with suppress(TimeoutError):
                await asyncio.wait_for(done, timeout_s)
            return await self.status(command_id)
        finally:
            waiters = self._waiters.get(command_id, [])
            if done in waiters:
                waiters.remove(done)
            if not waiters:
                self._waiters.pop(command_id, None)

    async def handle_reply(self, reply: CloudEvent) -> str:
        """Complete the command a reply answers; returns completed, duplicate, late, unknown or
        forged (from another source than the service the command went to)."""
        command_id = reply.extensions.get("causationid") or reply.extensions.get("correlationid")
        data = Reply.model_validate(reply.data)
        outcome = "unknown"
        if command_id:
            now = time.time()
            outcome = (
                await self._complete(
                    keys=[self._key(command_id), self.channel],
                    args=[
                        data.status,
                        orjson.dumps(data.result) if data.result is not None else "",
                        data.error or "",
                        repr(now),
                        _iso(now),
                        command_id,
                        reply.source,
                        orjson.dumps([[p.topic, p.partition, p.offset] for p in data.positions]),
                    ],
                )
            ).decode()
        self.replies[outcome] += 1
        self._instruments.command_replies.labels(outcome).inc()
        if outcome == "completed":
            self._instruments.command_outcomes.labels(data.status).inc()
        if outcome != "completed":
            log.warning("%s reply %s for command %s", outcome, reply.id, command_id)
        return outcome

    async def consume_replies(
        self, consumer: AIOKafkaConsumer, dead_letters: DeadLetters, stopping: asyncio.Event
    ) -> None:
        """Complete commands from the replies on this service's reply topic."""

        async def handle(record: Record) -> None:
            try:
                reply = decode(record.value, record.headers)
                if reply.type != REPLY_TYPE:
                    raise UnknownEventTypeError(f"expected {REPLY_TYPE}, got {reply.type!r}")
                if await self.handle_reply(reply) == "forged":
                    raise ForgedReplyError(
                        f"reply {reply.id[:100]!r} from source {reply.source[:100]!r}, not the"
                        " service its command was sent to; not applied (an upstream whose"
                        " source is not its name declares it: Upstream(..., source=...))"
                    )
            except (InvalidEventError, ValidationError, ForgedReplyError) as exc:
                await dead_letters.send([DeadLetter(record, exc)])

        await consume_each(consumer, handle, stopping, dead_letters=dead_letters)

    async def listen(self, stopping: asyncio.Event) -> None:
        """Wake local waiters when any instance completes a command, until `stopping` is set."""
        while not stopping.is_set():
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    while not stopping.is_set():
                        message = await pubsub.get_message(timeout=0.5)
                        if message is not None:
                            self._wake(message["data"].decode())
            except (RedisError, OSError) as exc:
                log.warning("command completion channel lost, reconnecting: %r", exc)
                for command_id in list(self._waiters):  # let waiters re-read the status
                    self._wake(command_id)
                await asyncio.sleep(1.0)

    def _wake(self, command_id: str) -> None:
        for done in self._waiters.get(command_id, []):
            if not done.done():
                done.set_result(None)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()
