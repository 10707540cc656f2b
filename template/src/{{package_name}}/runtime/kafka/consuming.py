"""An at-least-once consume loop: handle each record, then commit its partition's offset.

Used where handling is idempotent by itself (command status transitions, commands remembered by id),
so a redelivery after a crash or a rebalance is harmless. The read model's projector does not use
it: it keeps its positions in Redis, beside the state they produced. A record the Kafka client
cannot parse is dead-lettered by its position, with the rest of its record batch (unreadable.py).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from .positions import seek
from .records import Record
from .unreadable import Unreadable, UnreadableRecord, locate, readable_before

if TYPE_CHECKING:  # the dead letters' sender, which itself reads records
    from ..deadletter import DeadLetters

log = logging.getLogger(__name__)


async def consume_each(
    consumer: AIOKafkaConsumer,
    handle: Callable[[Record], Awaitable[None]],
    stopping: asyncio.Event,
    *,
    dead_letters: "DeadLetters",
    max_records: int = 100,
) -> None:
    """Run until `stopping` is set; an outage of Redis or Kafka rewinds to the last commit."""
    while not stopping.is_set():
        try:
            batches = await consumer.getmany(timeout_ms=200, max_records=max_records)
        except Exception as exc:
            unreadable = locate(exc)
            if unreadable is None:
                raise
            batches = await _past(consumer, unreadable)
        for tp, records in batches.items():
            try:
                for record in records:
                    if isinstance(record, UnreadableRecord):
                        await dead_letters.send_one(record, record.error)
                    else:
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


async def _past(
    consumer: AIOKafkaConsumer, where: Unreadable
) -> dict[TopicPartition, list[Record]]:
    """The records of `where.tp` before one the client cannot parse, then a stand-in for each
    position from it to the end of its record batch; the consumer is left after them, its other
    partitions at their last commit (what getmany() had gathered of them is lost)."""
    log.warning("the Kafka client cannot parse %s@%d: %r", where.tp, where.offset, where.error)
    for tp in consumer.assignment():
        await _rewind(consumer, tp)
    before = await readable_before(consumer, where, timeout_ms=200)
    if before is None:  # revoked meanwhile
        return {}
    records, position = before
    consumer.seek(where.tp, where.end)
    past: list[Record] = [*records, *where.records(position)]
    return {where.tp: past}
