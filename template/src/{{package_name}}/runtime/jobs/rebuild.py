"""Operational jobs run from the command line: dead letters, snapshot export, rebuild.

Redrive does not publish anything back to the source topics (the service does not own them): it
projects the dead letters themselves, with the same machinery and the same exactly-once effect as
live events, its position in the dead-letter topic kept in Redis. A letter that fails again is
dead-lettered again, keeping its first source and counting its attempts.

Rebuild loads the latest snapshot and replays the upstream topics into a new version of the read
model while the current one keeps serving; once caught up it swaps the version pointer (live
projectors follow at their next batch, queries within a second), then deletes the old version. A
replay publishes nothing: no commands, no Fact Events, no dead letters.
"""

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from . import snapshot
from .deadletter import DeadLetters, reason_of
from .errors import StartupError
from .kafka import new_consumer, new_producer, partitions_of, reached, seek, start_client
from .projection import Registry
from .projector import Projector
from .readmodel import ReadModel
from .service import connect_redis
from .settings import ServiceSettings
from .versions import ReadModelLostError

CATCH_UP_ROUNDS = 5


@dataclass
class Clients:
    readmodel: ReadModel
    producer: AIOKafkaProducer
    consumer: AIOKafkaConsumer


@asynccontextmanager
async def clients(settings: ServiceSettings) -> AsyncIterator[Clients]:
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


async def _existing(readmodel: ReadModel) -> ReadModel:
    """The live read model, which jobs that write to it need the service to have created."""
    try:
        await readmodel.versions.refresh()
    except ReadModelLostError:
        raise StartupError(
            f"no read model under REDIS_KEY_PREFIX={readmodel.keys.prefix} in this Redis:"
            " start the service first"
        ) from None
    return readmodel


async def _assign_all(
    consumer: AIOKafkaConsumer, settings: ServiceSettings, topic: str
) -> list[TopicPartition]:
    tps = await partitions_of(settings, topic)
    consumer.assign(tps)
    return tps


async def dead_letters(settings: ServiceSettings, *, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` dead letters, oldest first, each with its reason."""
    async with clients(settings) as c:
        tps = await _assign_all(c.consumer, settings, settings.dlq_topic)
        await seek(c.consumer, dict.fromkeys(tps))
        end: dict[TopicPartition, int] = await c.consumer.end_offsets(tps)
        letters: list[dict[str, Any]] = []
        while len(letters) < limit and not await reached(c.consumer, end):
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


async def redrive(settings: ServiceSettings, registry: Registry) -> Projector:
    """Project every dead letter present now; returns the projector, which counts the outcome."""
    async with clients(settings) as c:
        tps = await _assign_all(c.consumer, settings, settings.dlq_topic)
        end = await c.consumer.end_offsets(tps)
        dead_letters = DeadLetters(c.producer, settings.dlq_topic)
        projector = Projector(
            settings, c.consumer, await _existing(c.readmodel), registry, dead_letters
        )
        await projector.on_partitions_assigned(tps)
        await projector.run(until=end)
        return projector


async def export_snapshot(
    settings: ServiceSettings, topic: str, progress: snapshot.ProgressCallback | None = None
) -> snapshot.Summary:
    async with clients(settings) as c:
        readmodel = await _existing(c.readmodel)
        return await snapshot.export(readmodel, c.producer, settings, topic, progress)


async def rebuild(
    settings: ServiceSettings,
    registry: Registry,
    *,
    grace_s: float = 5.0,
    progress: snapshot.ProgressCallback | None = None,
) -> int:
    """Rebuild into a new version, swap it in, drop the old one; returns the new version."""
    async with clients(settings) as c:
        live = c.readmodel
        await live.versions.initialise()
        old = live.keys.version
        building = live.at(old + 1)
        lock = live.keys.rebuilding
        if not await live.redis.set(lock, old + 1, nx=True, ex=24 * 3600):
            raise RuntimeError("another rebuild is running")
        done_of_total = [0, 0]

        def report(done: int, total: int) -> None:
            done_of_total[:] = done, total
            if progress is not None:
                progress(done, total)

        publishing = asyncio.create_task(_publish_progress(live, done_of_total))
        try:
            await building.versions.drop()  # what a crashed rebuild may have left
            with suppress(StartupError):  # no data topic: replay the upstream topics alone
                await snapshot.load(
                    building, c.consumer, settings, registry.collections, settings.data_topic
                )
            tps = [
                tp
                for topic in registry.topics(settings)
                for tp in await partitions_of(settings, topic)
            ]
            c.consumer.assign(tps)
            # A replay re-reads what was dead-lettered when first consumed: it sends none again.
            unsent = DeadLetters(c.producer, settings.dlq_topic, replay=True)
            replay = Projector(settings, c.consumer, building, registry, unsent)
            await replay.on_partitions_assigned(tps)
            for _round in range(CATCH_UP_ROUNDS):  # live events keep coming: catch up, then swap
                end: dict[TopicPartition, int] = await c.consumer.end_offsets(tps)
                await replay.run(until=end, progress=report)
                latest: dict[TopicPartition, int] = await c.consumer.end_offsets(tps)
                if sum(latest.values()) - sum(end.values()) <= settings.ready_max_lag:
                    break
            await live.versions.swap(old + 1)
            await asyncio.sleep(grace_s)  # instances move their queries within a second
            await live.at(old).versions.drop()
            return old + 1
        finally:
            publishing.cancel()
            await live.redis.delete(lock, live.keys.rebuild_progress)


async def _publish_progress(live: ReadModel, done_of_total: list[int]) -> None:
    """Every second, where the rebuild is, for the running instances' /metrics."""
    while True:
        done, total = done_of_total
        progress = live.keys.rebuild_progress
        await live.redis.hset(progress, mapping={"done": done, "total": total})
        await live.redis.expire(progress, 60)  # gone soon if this job dies
        await asyncio.sleep(1.0)
