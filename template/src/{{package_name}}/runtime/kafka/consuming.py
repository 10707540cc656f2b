"""An at-least-once consume loop: handle each record, then commit its partition's offset.

Used where handling is idempotent by itself (command status transitions, commands remembered by id),
so a redelivery after a crash or a rebalance is harmless. The read model's projector does not use
it: it keeps its positions in Redis, beside the state they produced.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from .positions import seek

log = logging.getLogger(__name__)


class Record(Protocol):
    """What this service reads of a consumed record (aiokafka's ConsumerRecord is untyped)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


async def consume_each(
    consumer: AIOKafkaConsumer,
    handle: Callable[[Record], Awaitable[None]],
    stopping: asyncio.Event,
    *,
    max_records: int = 100,
) -> None:
    """Run until `stopping` is set; an outage of Redis or Kafka rewinds to the last commit."""
    while not stopping.is_set():
        batches = await consumer.getmany(timeout_ms=200, max_records=max_records)
        for tp, records in batches.items():
            try:
                for record in records:
                    await handle(record)
            except (RedisError, KafkaError, OSError) as exc:
                log.warning("handling %s failed, retrying from its last commit: %r", tp, exc)
                await asyncio.sleep(1.0)
                await _rewind(consumer, tp)
                continue
            try:
                await consumer.commit({tp: records[-1].offset + 1})
            except KafkaError as exc:  # rebalanced meanwhile: the new owner redoes, harmlessly
                log.warning("offset commit for %s failed: %r", tp, exc)


async def _rewind(consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
    await seek(consumer, {tp: await consumer.committed(tp)})
