"""Operational jobs run from the command line: inspect and redrive the dead-letter topic.

Redrive does not publish anything back to the source topics (the service does not own them): it
projects the dead letters themselves, with the same machinery and the same exactly-once effect as
live events, its position in the dead-letter topic kept in Redis. A letter that fails again is
dead-lettered again, keeping its first source and counting its attempts.
"""

import base64
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ..settings import Settings
from .deadletter import reason_of
from .kafka import new_consumer, new_producer, partitions_of, start_client
from .projection import Registry
from .projector import Projector
from .readmodel import ReadModel
from .service import connect_redis


@dataclass
class Clients:
    readmodel: ReadModel
    producer: AIOKafkaProducer
    consumer: AIOKafkaConsumer


@asynccontextmanager
async def clients(settings: Settings) -> AsyncIterator[Clients]:
    """Redis, a producer and a group-less consumer, closed on exit."""
    async with AsyncExitStack() as stack:
        redis = await connect_redis(settings)
        stack.push_async_callback(redis.aclose)
        producer = new_producer(settings)
        await start_client(producer, settings)
        stack.push_async_callback(producer.stop)
        consumer = new_consumer(settings, group_id=None)
        await start_client(consumer, settings)
        stack.push_async_callback(consumer.stop)
        yield Clients(ReadModel(redis, settings.redis_key_prefix), producer, consumer)


async def _assign_all(
    consumer: AIOKafkaConsumer, settings: Settings, topic: str
) -> list[TopicPartition]:
    tps = await partitions_of(settings, topic)
    consumer.assign(tps)
    return tps


async def dead_letters(settings: Settings, *, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` dead letters, oldest first, each with its reason."""
    async with clients(settings) as c:
        tps = await _assign_all(c.consumer, settings, settings.dlq_topic)
        await c.consumer.seek_to_beginning(*tps)
        end: dict[TopicPartition, int] = await c.consumer.end_offsets(tps)
        letters: list[dict[str, Any]] = []
        while len(letters) < limit:
            positions = [await c.consumer.position(tp) for tp in tps]
            if all(position >= end[tp] for tp, position in zip(tps, positions, strict=True)):
                break
            batches = await c.consumer.getmany(timeout_ms=1000, max_records=limit - len(letters))
            for records in batches.values():
                letters.extend(_describe(record) for record in records)
        return sorted(letters, key=lambda letter: (letter["time"], letter["partition"]))[:limit]


def _describe(record: Any) -> dict[str, Any]:
    value: bytes | None = record.value
    try:
        shown = None if value is None else value.decode()
    except UnicodeDecodeError:
        shown = "base64:" + base64.b64encode(value or b"").decode()
    return {
        "partition": record.partition,
        "offset": record.offset,
        "time": reason_of(record).get("time", ""),
        "key": None if record.key is None else record.key.decode(errors="replace"),
        "reason": reason_of(record),
        "value": shown,
    }


async def redrive(settings: Settings, registry: Registry) -> Projector:
    """Project every dead letter present now; returns the projector, which counts the outcome."""
    async with clients(settings) as c:
        tps = await _assign_all(c.consumer, settings, settings.dlq_topic)
        end = await c.consumer.end_offsets(tps)
        projector = Projector(
            c.consumer,
            c.producer,
            c.readmodel,
            registry,
            dlq_topic=settings.dlq_topic,
            max_batch=settings.consumer_max_batch,
            mirror_to_kafka=False,  # no consumer group: the positions live in Redis only
        )
        await projector.on_partitions_assigned(tps)
        await projector.run(until=end)
        return projector
