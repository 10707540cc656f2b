"""Kafka clients built from settings, and a bounded wait for the broker at start-up."""

import asyncio
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from .errors import StartupError
from .settings import ServiceSettings


class Record(Protocol):
    """What this service reads of a consumed record (aiokafka's ConsumerRecord is untyped)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


def new_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    """An idempotent producer: a retried send never writes a record twice."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.service_name}-producer",
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
    )


def new_consumer(settings: ServiceSettings, *, group_id: str | None) -> AIOKafkaConsumer:
    """A consumer that never auto-commits: positions live in Redis beside the state they made."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.service_name}-consumer",
        group_id=group_id,
        group_instance_id=settings.consumer_instance_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )


async def start_client(
    client: AIOKafkaProducer | AIOKafkaConsumer | AIOKafkaAdminClient, settings: ServiceSettings
) -> None:
    """Start a client, retrying while the broker is unreachable, KAFKA_STARTUP_TIMEOUT_S at most."""
    retrying = AsyncRetrying(
        stop=stop_after_delay(settings.kafka_startup_timeout_s),
        wait=wait_exponential(multiplier=0.2, max=2.0),
        retry=retry_if_exception_type(KafkaConnectionError),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                await client.start()
        # Let the client's background tasks begin: aiokafka raises CancelledError when a consumer
        # is stopped before they ever ran.
        await asyncio.sleep(0)
    except KafkaError as exc:
        await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())
        raise StartupError(
            f"Kafka is unreachable at KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers} "
            f"(gave up after KAFKA_STARTUP_TIMEOUT_S={settings.kafka_startup_timeout_s:g}s): {exc}"
        ) from exc


async def partitions_of(settings: ServiceSettings, topic: str) -> list[TopicPartition]:
    """The partitions of a topic; StartupError if it does not exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await start_client(admin, settings)
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] or not described["partitions"]:
        raise StartupError(f"topic {topic} does not exist")
    return sorted(TopicPartition(topic, p["partition"]) for p in described["partitions"])


async def seek(consumer: AIOKafkaConsumer, positions: Mapping[TopicPartition, int | None]) -> None:
    """Move each partition to its offset, or to its beginning where it has none.

    Explicit offsets: `seek_to_beginning` races with a consumer's own `auto_offset_reset`.
    """
    missing = [tp for tp, offset in positions.items() if offset is None]
    begin = await consumer.beginning_offsets(missing) if missing else {}
    for tp, offset in positions.items():
        consumer.seek(tp, begin[tp] if offset is None else offset)


async def reached(consumer: AIOKafkaConsumer, end: Mapping[TopicPartition, int]) -> bool:
    """Whether the consumer is at or past `end` everywhere.

    Its position, not the last record's offset + 1: that also steps over transaction markers and
    records that retention has already removed.
    """
    for tp, offset in end.items():
        if await consumer.position(tp) < offset:
            return False
    return True


async def missing_topics(settings: ServiceSettings, topics: list[str]) -> list[str]:
    """Those of `topics` the cluster does not have."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await start_client(admin, settings)
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    return [topic for topic in topics if topic not in existing]


def own_topics(settings: ServiceSettings) -> list[str]:
    """The topics this service owns (DESIGN.md, "Topic conventions")."""
    topics = [
        settings.events_topic,
        settings.commands_topic,
        settings.reply_topic,
        settings.dlq_topic,
        settings.data_topic,
    ]
    return [*topics, settings.results_topic] if settings.pipeline_results else topics


async def create_topics(
    settings: ServiceSettings, topics: Sequence[str], *, partitions: int, replication: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await start_client(admin, settings)
    try:
        existing = set(await admin.list_topics())
        missing = [topic for topic in dict.fromkeys(topics) if topic not in existing]
        if missing:
            new = [NewTopic(topic, partitions, replication) for topic in missing]
            with suppress(TopicAlreadyExistsError):  # another instance was quicker
                await admin.create_topics(new)
        return missing
    finally:
        await admin.close()
