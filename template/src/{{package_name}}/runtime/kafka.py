"""Kafka clients built from settings, and a bounded wait for the broker at start-up."""

from collections.abc import Sequence
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from ..settings import Settings
from .errors import StartupError


class Record(Protocol):
    """What this service reads of a consumed record (aiokafka's ConsumerRecord is untyped)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


def new_producer(settings: Settings) -> AIOKafkaProducer:
    """An idempotent producer: a retried send never writes a record twice."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.service_name}-producer",
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
    )


def new_consumer(settings: Settings, *, group_id: str | None) -> AIOKafkaConsumer:
    """A consumer that never auto-commits: positions live in Redis beside the state they made."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.service_name}-consumer",
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )


async def start_client(client: AIOKafkaProducer | AIOKafkaConsumer, settings: Settings) -> None:
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
    except KafkaError as exc:
        await client.stop()
        raise StartupError(
            f"Kafka is unreachable at KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers} "
            f"(gave up after KAFKA_STARTUP_TIMEOUT_S={settings.kafka_startup_timeout_s:g}s): {exc}"
        ) from exc
