"""Snapshots of the read model on the private data topic: a first start loads one before going live.

Format. One export is a set of records, spread over the topic's partitions, each with the headers
`snapshot.export` (the export's id) and `snapshot.kind`:

    entity    key `<collection>:<entity key>`     value: the entity's JSON
    position  key `<topic>:<partition>`           value: the next offset to apply there (ASCII)
    end       key `end`                           value: {"export", "entities", "positions",
                                                          "exported_at"} (JSON)

The `end` record is written only once every other record of the export is acknowledged, so an export
without one is incomplete and ignored. Loading takes the last complete export: its entities, and its
positions as where the projector starts on the upstream topics (from the earliest retained event
where it has none). Once its `end` record is written, an export deletes the records before it.

Exporting freezes the projector (not the queries) while it reads, so entities and positions agree.
Loading keeps its position in the data topic in Redis like any projection, so a crash resumes it.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import RecordsToDelete

from .kafka import Record, client_options, new_admin, partitions_of, reached, seek, start_client
from .projection import Collection
from .readmodel import EntityRef, ReadModel, Writes, writes_for
from .settings import ServiceSettings

log = logging.getLogger(__name__)

EXPORT = "snapshot.export"
KIND = "snapshot.kind"
FREEZE_TTL_S = 30
ProgressCallback = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class Summary:
    export: str | None
    entities: int
    positions: int


def _headers(record: Record) -> dict[str, str]:
    return {name: value.decode() for name, value in record.headers if name.startswith("snapshot.")}


# ---------------------------------------------------------------------------------------- export
async def export(
    readmodel: ReadModel,
    producer: AIOKafkaProducer,
    settings: ServiceSettings,
    topic: str,
    progress: ProgressCallback | None = None,
) -> Summary:
    """Write the live version of the read model, with its positions, to `topic`."""
    export_id = uuid.uuid4().hex
    redis = readmodel.redis
    if not await redis.set(readmodel.freeze_key, export_id, nx=True, ex=FREEZE_TTL_S):
        raise RuntimeError("another snapshot export is running (its freeze is held)")
    try:
        await readmodel.refresh()
        tps = await partitions_of(settings, topic)
        before = await _end_offsets(settings, tps)
        headers = [(EXPORT, export_id.encode())]
        positions = await _positions(readmodel)
        sent = [
            await producer.send(
                topic,
                str(offset).encode(),
                key=f"{tp.topic}:{tp.partition}".encode(),
                headers=[*headers, (KIND, b"position")],
            )
            for tp, offset in positions.items()
        ]
        total = await readmodel.count()
        entities = 0
        buckets = readmodel.versioned("e", "")
        async for bucket in redis.scan_iter(match=buckets + "*", count=500):
            collection = bucket.decode()[len(buckets) :].rsplit(":", 1)[0]
            async for key, value in redis.hscan_iter(bucket, count=500):
                sent.append(
                    await producer.send(
                        topic,
                        value,
                        key=f"{collection}:{key.decode()}".encode(),
                        headers=[*headers, (KIND, b"entity")],
                    )
                )
                entities += 1
            if len(sent) >= 5000:
                await asyncio.gather(*sent)
                sent = []
                await redis.expire(readmodel.freeze_key, FREEZE_TTL_S)
                if progress:
                    progress(entities, total)
        await asyncio.gather(*sent)
        await producer.flush()
        end = {
            "export": export_id,
            "entities": entities,
            "positions": len(positions),
            "exported_at": datetime.now(UTC).isoformat(),
        }
        await producer.send_and_wait(
            topic, orjson.dumps(end), key=b"end", headers=[*headers, (KIND, b"end")]
        )
        if progress:
            progress(entities, total)
    finally:
        if await redis.get(readmodel.freeze_key) == export_id.encode():
            await redis.delete(readmodel.freeze_key)
    await _delete_before(settings, before)
    return Summary(export_id, entities, len(positions))


async def _positions(readmodel: ReadModel) -> dict[TopicPartition, int]:
    prefix = readmodel.versioned("pos", "")
    keys = [key async for key in readmodel.redis.scan_iter(match=prefix + "*", count=500)]
    values = cast(list[bytes], await readmodel.redis.mget(keys)) if keys else []
    positions = {}
    for key, value in zip(keys, values, strict=True):
        topic, partition = key.decode()[len(prefix) :].rsplit(":", 1)
        positions[TopicPartition(topic, int(partition))] = int(value)
    return positions


async def _end_offsets(
    settings: ServiceSettings, tps: list[TopicPartition]
) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(**client_options(settings))
    await start_client(consumer, settings)
    try:
        return cast(dict[TopicPartition, int], await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def _delete_before(settings: ServiceSettings, offsets: Mapping[TopicPartition, int]) -> None:
    """Drop the records of earlier exports (best effort: loading ignores them anyway)."""
    admin = new_admin(settings)
    await start_client(admin, settings)
    try:
        await admin.delete_records(
            {tp: RecordsToDelete(offset) for tp, offset in offsets.items() if offset > 0}
        )
    except Exception as exc:  # retention removes them eventually
        log.warning("could not delete earlier snapshot records: %r", exc)
    finally:
        await admin.close()


# ---------------------------------------------------------------------------------------- load
async def load(
    readmodel: ReadModel,
    consumer: AIOKafkaConsumer,
    settings: ServiceSettings,
    collections: Mapping[str, Collection[Any]],
    topic: str,
    progress: ProgressCallback | None = None,
) -> Summary:
    """Load the last complete export of `topic` into `readmodel`; resumes where a crash left it."""
    tps = await partitions_of(settings, topic)
    consumer.assign(tps)
    end: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    export_id = await _last_complete_export(consumer, tps, end)
    if export_id is None:
        log.info("no complete snapshot on %s: starting from the upstream topics alone", topic)
        return Summary(None, 0, 0)
    stored = await _seek_to_stored(readmodel, consumer, tps)
    begin: dict[TopicPartition, int] = await consumer.beginning_offsets(tps)
    total = sum(end[tp] - max(begin[tp], stored[tp] or 0) for tp in tps)
    done = entities = positions = 0
    last_report = time.monotonic()
    while not await reached(consumer, end):
        batches = await consumer.getmany(timeout_ms=1000, max_records=2000)
        states: dict[EntityRef, bytes] = {}
        upstream: dict[TopicPartition, int] = {}
        new: dict[TopicPartition, int] = {}
        for tp, records in batches.items():
            new[tp] = records[-1].offset + 1
            for record in records:
                done += 1
                headers = _headers(record)
                if headers.get(EXPORT) != export_id:
                    continue
                if headers.get(KIND) == "position":
                    topic_name, partition = record.key.decode().rsplit(":", 1)
                    upstream[TopicPartition(topic_name, int(partition))] = int(record.value)
                    positions += 1
                elif headers.get(KIND) == "entity":
                    collection, key = record.key.decode().split(":", 1)
                    if collection not in collections:
                        log.warning("snapshot entity of unknown collection %r skipped", collection)
                        continue
                    states[(collection, key)] = record.value
                    entities += 1
        if not new:
            continue
        expected = {tp: stored[tp] for tp in new}
        fold = _replacing(collections, states)
        moved_to = {**upstream, **new}
        if await readmodel.commit(expected, moved_to, list(states), fold, bootstrapping=True):
            stored.update(new)
        else:  # another instance is loading the same snapshot: carry on from where it got
            stored = await _seek_to_stored(readmodel, consumer, tps)
        if progress and (time.monotonic() - last_report > 0.5 or await reached(consumer, end)):
            progress(done, total)
            last_report = time.monotonic()
    if progress:
        progress(total, total)
    return Summary(export_id, entities, positions)


def _replacing(
    collections: Mapping[str, Collection[Any]], states: dict[EntityRef, bytes]
) -> Callable[[list[bytes | None]], Awaitable[Writes]]:
    """A fold that replaces the entities it reads with the exported JSON `states`, as it is: only
    collections with lookups decode them, to keep the lookups in step."""

    async def fold(current: list[bytes | None]) -> Writes:
        writes = Writes(states=dict(states))
        for (ref, new), old in zip(states.items(), current, strict=True):
            collection = collections[ref[0]]
            if collection.lookups:
                before = {ref: None if old is None else collection.loads(old)}
                linked = writes_for(collections, before, {ref: collection.loads(new)})
                writes.linked += linked.linked
                writes.unlinked += linked.unlinked
        return writes

    return fold


async def _seek_to_stored(
    readmodel: ReadModel, consumer: AIOKafkaConsumer, tps: list[TopicPartition]
) -> dict[TopicPartition, int | None]:
    stored = await readmodel.positions(tps)
    await seek(consumer, stored)
    return stored


async def _last_complete_export(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], end: Mapping[TopicPartition, int]
) -> str | None:
    await seek(consumer, dict.fromkeys(tps))
    ends: list[tuple[str, str]] = []
    while not await reached(consumer, end):
        batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
        for records in batches.values():
            for record in records:
                headers = _headers(record)
                if headers.get(KIND) == "end":
                    summary = orjson.loads(record.value)
                    ends.append((summary["exported_at"], headers[EXPORT]))
    return max(ends)[1] if ends else None
