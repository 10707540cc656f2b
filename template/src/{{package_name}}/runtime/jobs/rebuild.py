"""`rebuild`: the read model replayed into a new version, swapped in once caught up.

It loads the latest snapshot and replays the upstream topics into a new version of the read
model while the current one keeps serving; once caught up it swaps the version pointer (live
projectors follow at their next batch, queries within a second), then deletes the old version. A
replay publishes nothing: no commands, no Fact Events, no dead letters.
"""

import asyncio
from contextlib import suppress

from aiokafka import TopicPartition

from .. import snapshot
from ..deadletter import DeadLetters
from ..errors import StartupError
from ..kafka import partitions_of
from ..projection import Registry
from ..projector import Projector
from ..readmodel import ReadModel
from ..settings import ServiceSettings
from .connections import clients

CATCH_UP_ROUNDS = 5


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
        building = live.at(old + 1, buckets=live.keys.bucket_count)  # grown as the live one
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
            await building.versions.mark_layout()
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
