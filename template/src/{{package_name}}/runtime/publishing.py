"""Publishing an upstream Fact Event by hand (`publish`), to try the service without its upstream.

Only the event types the registry declares can be sent (projected, or upcast from an older
version), with data that validates against their contract and that the projector then accepts: the
same validation, upcasting and key the projector runs. Without data, a sample is built from the
contract: a field's `examples` (pydantic `Field(examples=[...])`) or default where it has them,
else a value that satisfies its type and constraints.
"""

from dataclasses import dataclass, replace
from typing import Any

from polyfactory.factories.pydantic_factory import ModelFactory
from pydantic import BaseModel, ValidationError

from .events import CloudEvent, InvalidEventError
from .kafka import missing_topics, new_producer, start_client
from .projection import Registry
from .settings import ServiceSettings
from .upstreams import upstream_of


class RefusedError(ValueError):
    """What was asked cannot be published; the message says why and what would do."""


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: str
    event: CloudEvent


@dataclass(frozen=True)
class Sent:
    topic: str
    partition: int
    offset: int
    key: str
    event: CloudEvent


def sample(model: type[BaseModel]) -> dict[str, Any]:
    """A valid instance of `model`, as JSON data."""
    factory = ModelFactory.create_factory(model, __use_examples__=True, __use_defaults__=True)
    built: BaseModel = factory.build()
    return built.model_dump(mode="json")


def prepare(
    settings: ServiceSettings,
    registry: Registry,
    event_type: str,
    data: Any = None,
    *,
    key: str | None = None,
    topic: str | None = None,
) -> Outgoing:
    """The event to send, checked as the projector will check it; raises RefusedError."""
    declared = registry.contracts()
    if not declared:
        raise RefusedError(
            "this service declares no event types: add projections (and upcasters) to REGISTRY"
            " in projections/__init__.py"
        )
    if event_type in registry.ignored:
        raise RefusedError(f"{event_type} is one this service ignores: it would change nothing")
    if event_type not in declared:
        raise RefusedError(
            f"unknown event type {event_type!r}; this service declares: {', '.join(declared)}"
        )
    model = declared[event_type]
    if data is None:
        if model is None:
            raise RefusedError(
                f"{event_type} declares no contract to build a sample from: give --data"
            )
        data = sample(model)
    event = CloudEvent.create(event_type, data, source=f"{settings.service_name}/publish")
    try:
        if model is not None:  # for an upcast version, the projector checks only what follows
            model.model_validate(data)
        changes = registry.changes(event)  # the projector's validation, upcasting and keys
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'data'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise RefusedError(f"invalid data for {event_type}: {reasons}") from None
    except InvalidEventError as exc:
        raise RefusedError(f"invalid data: {exc}") from None
    if key is None:
        keys = sorted({change.key for change in changes})
        if len(keys) != 1:
            raise RefusedError(
                f"cannot derive the Kafka key: {event_type} changes {keys or 'no entity'}; --key"
            )
        key = keys[0]
    return Outgoing(_topic(settings, registry, model, topic), key, replace(event, subject=key))


def _topic(
    settings: ServiceSettings, registry: Registry, model: type[BaseModel] | None, topic: str | None
) -> str:
    consumed = registry.topics(settings)
    if topic is not None:
        if topic not in consumed:
            raise RefusedError(
                f"--topic {topic} is not one the service consumes ({', '.join(consumed) or 'none'})"
            )
        return topic
    declared = upstream_of(model).events_topic(settings)
    if declared in consumed or not settings.upstream_topics:
        return declared
    if len(consumed) != 1:  # UPSTREAM_TOPICS moved the topics: which one is not known
        raise RefusedError(
            f"UPSTREAM_TOPICS has {len(consumed)} topics ({', '.join(consumed) or 'none'}):"
            " say which with --topic"
        )
    return consumed[0]


async def send(settings: ServiceSettings, outgoing: Outgoing) -> Sent:
    """Publish in structured mode, as the upstream services do; raises StartupError when Kafka
    cannot be reached and RefusedError when the topic does not exist."""
    if await missing_topics(settings, [outgoing.topic]):
        raise RefusedError(
            f"topic {outgoing.topic} does not exist (for a local set-up:"
            " `create-topics --with-upstream`)"
        )
    producer = new_producer(settings)
    await start_client(producer, settings)
    try:
        metadata = await producer.send_and_wait(
            outgoing.topic, outgoing.event.to_json(), key=outgoing.key.encode()
        )
    finally:
        await producer.stop()
    return Sent(outgoing.topic, metadata.partition, metadata.offset, outgoing.key, outgoing.event)
