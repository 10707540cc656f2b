"""Receiving commands: this service is the sole subscriber of its own `.commands` topic.

Each command goes to the handler registered for its type. The handler's Fact Events go to the
service's `.events` topic (it is the sole publisher; results to `.results` with pipeline results),
then its outcome goes to the reply topic the command names, with the same correlation id and the
command's id as `causationid`. Delivery is at-least-once: a command already handled (remembered in
Redis by id) is not handled again, and Fact Events get ids derived from the command's, so a
consumer can recognise the rare duplicate of a crash between publishing and remembering.

A command that cannot be handled (not a CloudEvent, unknown type, invalid data, a handler that
keeps raising) goes to the dead-letter topic, and its sender gets a failed reply.
"""

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, get_type_hints

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError, UnknownTopicOrPartitionError
from pydantic import BaseModel, ValidationError

from ..deadletter import DeadLetter, DeadLetters, Retry
from ..events import CloudEvent, InvalidEventError, decode
from ..kafka import Record, consume_each
from ..observability import logs, tracing
from ..observability.instruments import Instruments
from ..projection import (
    Contract,
    InvalidDataError,
    UnknownEventTypeError,
    contract_of,
    type_of,
)
from ..readmodel import Queries, ReadModel
from .sending import REPLY_TYPE, FactPosition, Reply

log = logging.getLogger(__name__)

D = TypeVar("D", bound=BaseModel)


class CommandRejected(Exception):  # noqa: N818 - a verdict, not a fault
    """A handler's refusal: answered `failed` with this message; not dead-lettered."""


@dataclass(frozen=True, slots=True)
class Command(Generic[D]):
    id: str
    type: str
    source: str
    subject: str | None
    correlation_id: str
    data: D
    # On whose behalf it was sent: the subject of the sender's authenticated user (its
    # `principal` extension attribute), or None. Check it where a command is not for everyone.
    principal: str | None = None


@dataclass(frozen=True)
class FactEvent:
    """An event this service publishes about its own entities."""

    type: str
    key: str
    data: BaseModel


def fact(key: str, data: Contract) -> FactEvent:
    """A Fact Event of `data`'s contract (its TYPE), about the entity `key`."""
    return FactEvent(type_of(type(data)), key, data)


@dataclass
class Outcome:
    """What a handler did: the reply's result, the Fact Events and pipeline results to publish."""

    result: dict[str, Any] | None = None
    events: list[FactEvent] = field(default_factory=list)
    results: list[FactEvent] = field(default_factory=list)


@dataclass(frozen=True)
class HandlerContext:
    """What a handler may read: the read model (its own view of the world), read-only."""

    readmodel: Queries


class UndeclaredEventError(Exception):
    """A handler published an event its CommandHandler does not declare."""


@dataclass(frozen=True)
class CommandHandler(Generic[D]):
    """Handles one command type. `events` and `results` declare, by type, the Fact Events and
    pipeline results it may publish: /asyncapi.json and `contracts check` read them, and the worker
    refuses to publish anything else, so the declaration cannot drift from what is sent."""

    command_type: str
    data: type[D]
    handle: Callable[[Command[D], HandlerContext], Awaitable[Outcome]]
    events: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    results: Mapping[str, type[BaseModel]] = field(default_factory=dict)

    def check(self, outcome: Outcome) -> None:
        """Raise UndeclaredEventError for a published event the declaration does not allow."""
        for kind, facts, declared in (
            ("events", outcome.events, self.events),
            ("results", outcome.results, self.results),
        ):
            for fact in facts:
                model = declared.get(fact.type)
                if model is None or not isinstance(fact.data, model):
                    raise UndeclaredEventError(
                        f"{self.command_type} handler published {fact.type}"
                        f" ({type(fact.data).__name__}), not declared in its `{kind}`"
                    )


Handle = Callable[[Command[D], HandlerContext], Awaitable[Outcome]]


def handle(
    function: Handle[D],
    *,
    events: Iterable[type[Contract]] = (),
    results: Iterable[type[Contract]] = (),
) -> CommandHandler[D]:
    """The handler of `function`, `async def f(command: Command[SomeContract], context) -> Outcome`.

    The command type and its contract come from the annotation `command: Command[C]`; `events`
    (and `results`, with pipeline results) are the contracts of what it may publish.
    """
    contract: type[D] = _command_contract(function)
    return CommandHandler(
        type_of(contract),
        contract,
        function,
        events={type_of(model): model for model in events},
        results={type_of(model): model for model in results},
    )


def _command_contract(function: Callable[..., Any]) -> Any:
    """The contract `C` of `function`'s first parameter, annotated `Command[C]`."""
    first = next(iter(get_type_hints(function).values()), None)
    contract = contract_of(first, Command)
    if contract is not None:
        return contract
    name = getattr(function, "__qualname__", repr(function))
    raise TypeError(
        f"{name}: a handler is `async def f(command: Command[SomeContract], context:"
        " HandlerContext) -> Outcome`, its command annotated with the Contract it handles"
    )


class Handlers:
    def __init__(self, handlers: Iterable[CommandHandler[Any]]) -> None:
        self._handlers = {handler.command_type: handler for handler in handlers}

    def get(self, command_type: str) -> CommandHandler[Any] | None:
        return self._handlers.get(command_type)

    def __iter__(self) -> Iterator[CommandHandler[Any]]:
        return iter(self._handlers.values())


class CommandWorker:
    """Consumes the `.commands` topic, handling each command once."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        readmodel: ReadModel,
        handlers: Handlers,
        *,
        source: str,
        events_topic: str,
        results_topic: str | None,
        dead_letters: DeadLetters,
        retry: Retry,
        handled_retention_s: int,
        instruments: Instruments | None = None,
    ) -> None:
        self._consumer = consumer
        self._instruments = instruments or Instruments()
        self._producer = producer
        self._redis = readmodel.redis
        self._keys = readmodel.keys
        self._queries = readmodel.queries  # what handlers see
        self._handlers = handlers
        self._source = source
        self._events_topic = events_topic
        self._results_topic = results_topic
        self._dead_letters = dead_letters
        self._retry = retry
        self._handled_retention_s = handled_retention_s

    async def run(self, stopping: asyncio.Event) -> None:
        await consume_each(self._consumer, self._handle, stopping, dead_letters=self._dead_letters)

    async def _handle(self, record: Record) -> None:
        try:
            envelope = decode(record.value, record.headers)
        except InvalidEventError as exc:
            await self._dead_letters.send([DeadLetter(record, exc)])
            self._instruments.commands_handled.labels("", "dead_lettered").inc()
            return
        correlation_id = envelope.extensions.get("correlationid", envelope.id)
        with (
            tracing.consuming(f"handle {envelope.type}", record.headers),
            logs.handling(envelope.id, correlation_id),
        ):
            self._instruments.commands_handled.labels(
                envelope.type, await self._handle_command(record, envelope)
            ).inc()

    async def _handle_command(self, record: Record, envelope: CloudEvent) -> str:
        """Handle a command and answer it; returns the outcome."""
        reply_to = envelope.extensions.get("replyto")
        if reply_to is not None and not _TOPIC_NAME.match(reply_to):
            # No reply can be sent: sending would fail again at every retry, stopping the loop.
            unaddressable = InvalidReplyToError(f"replyto {reply_to[:100]!r} is not a topic name")
            await self._dead_letters.send_one(record, unaddressable)
            return "dead_lettered"
        if await self._redis.exists(self._keys.handled(envelope.id)):
            log.info("command %s was handled already", envelope.id)
            return "duplicate"
        outcome: Outcome | None = None
        error: str | None = None
        result = "succeeded"
        try:
            outcome = await self._run_handler(envelope)
        except CommandRejected as exc:
            error, result = str(exc), "rejected"
        except _Undeliverable as exc:
            await self._dead_letters.send([DeadLetter(record, exc.cause, attempts=exc.attempts)])
            error, result = f"{type(exc.cause).__name__}: {exc.cause}", "dead_lettered"
        try:
            await self._publish(envelope, outcome, error)
        except ReplyRefusedError as exc:  # its Fact Events are out; only its answer cannot go
            await self._dead_letters.send_one(record, exc)
            result = "dead_lettered"
        await self._redis.set(self._keys.handled(envelope.id), b"1", ex=self._handled_retention_s)
        return result

    async def _run_handler(self, envelope: CloudEvent) -> Outcome:
        handler = self._handlers.get(envelope.type)
        if handler is None:
            unknown = UnknownEventTypeError(f"no handler for command type {envelope.type!r}")
            raise _Undeliverable(unknown, attempts=1)
        try:
            data = handler.data.model_validate(envelope.data)
        except ValidationError as exc:
            raise _Undeliverable(InvalidDataError(f"{envelope.type}: {exc}"), attempts=1) from exc
        command = Command(
            id=envelope.id,
            type=envelope.type,
            source=envelope.source,
            subject=envelope.subject,
            correlation_id=envelope.extensions.get("correlationid", envelope.id),
            data=data,
            principal=envelope.extensions.get("principal"),
        )
        context = HandlerContext(self._queries)
        attempt = 1
        while True:
            try:
                outcome = await handler.handle(command, context)
            except CommandRejected:
                raise
            except Exception as exc:
                if attempt >= self._retry.attempts:
                    raise _Undeliverable(exc, attempts=attempt) from exc
                log.warning("handling %s failed (attempt %d): %r", envelope.id, attempt, exc)
                await self._retry.wait(attempt)
                attempt += 1
                continue
            try:
                handler.check(outcome)
            except UndeclaredEventError as exc:  # a bug in the handler: retrying cannot help
                raise _Undeliverable(exc, attempts=attempt) from exc
            return outcome

    async def _publish(
        self, command: CloudEvent, outcome: Outcome | None, error: str | None
    ) -> None:
        """Fact Events and results first, then the reply with where they landed, each
        acknowledged by the broker."""
        now = datetime.now(UTC).isoformat()
        sent = []
        published: list[tuple[str, FactEvent]] = []
        if outcome is not None:
            published = [(self._events_topic, event) for event in outcome.events]
            if self._results_topic is not None:
                published += [(self._results_topic, result) for result in outcome.results]
            for index, (topic, fact) in enumerate(published):
                event = CloudEvent.create(
                    fact.type,
                    fact.data,
                    source=self._source,
                    subject=fact.key,
                    id_from=f"{command.id}/{index}",
                    time=now,
                    extensions=_correlation(command),
                )
                sent.append(
                    await self._producer.send(
                        topic, event.to_json(), key=fact.key.encode(), headers=tracing.headers()
                    )
                )
        landed = await asyncio.gather(*sent)
        reply_to = command.extensions.get("replyto")
        if not reply_to:
            return
        reply = Reply(
            status="failed" if outcome is None else "succeeded",
            result=None if outcome is None else outcome.result,
            error=error,
            # Where its Fact Events are, for a consistency token (results are no facts).
            positions=[
                FactPosition(topic=md.topic, partition=md.partition, offset=md.offset)
                for md, (topic, _) in zip(landed, published, strict=True)
                if topic == self._events_topic
            ],
        )
        event = CloudEvent.create(
            REPLY_TYPE,
            reply,
            source=self._source,
            subject=command.subject,
            id_from=f"{command.id}/reply",
            time=now,
            extensions={**_correlation(command), "causationid": command.id},
        )
        key = (command.subject or command.id).encode()
        try:
            await self._producer.send_and_wait(
                reply_to, event.to_json(), key=key, headers=tracing.headers()
            )
        except _REFUSED as exc:  # no such topic, or not this service's to see or write
            raise ReplyRefusedError(reply_to, exc) from exc


def _correlation(command: CloudEvent) -> dict[str, str]:
    return {"correlationid": command.extensions.get("correlationid", command.id)}


class InvalidReplyToError(InvalidEventError):
    """A command whose `replyto` cannot name a Kafka topic: it cannot be answered."""


class ReplyRefusedError(InvalidEventError):
    """A command whose `replyto` the broker will not take this service's reply on: a topic that
    does not exist, or one its ACLs do not let this service write. Retrying cannot help."""

    def __init__(self, reply_to: str, cause: Exception) -> None:
        super().__init__(
            f"replyto {reply_to[:100]!r}: the broker refuses this service's reply there"
            f" ({type(cause).__name__})"
        )


# What the broker answers for a topic that cannot take a record from this service.
_REFUSED = (TopicAuthorizationFailedError, UnknownTopicOrPartitionError)


_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class _Undeliverable(Exception):  # noqa: N818
    def __init__(self, cause: Exception, *, attempts: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.attempts = attempts
