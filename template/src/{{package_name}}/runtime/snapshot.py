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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import RecordsToDelete

from .kafka import Record, client_options, new_admin, partitions_of, reached, seek, start_client
from .projection import Collection
from .readmodel import EntityRef, ReadModel, Writes
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
LOAD_BATCH = 2000  # records per Redis commit
TAIL = 1000  # records per partition first read back from the end, looking for the last export


@dataclass
class _Batch:
    """What one batch of data topic records writes."""

    upstream: dict[TopicPartition, int]  # positions on the upstream topics
    states: dict[EntityRef, bytes]
    new: dict[TopicPartition, int]  # positions on the data topic


async def load(
    readmodel: ReadModel,
    consumer: AIOKafkaConsumer,
    settings: ServiceSettings,
    collections: Mapping[str, Collection[Any]],
    topic: str,
    progress: ProgressCallback | None = None,
) -> Summary:
    """Load the last complete export of `topic` into `readmodel`; resumes where a crash left it.

    Loads into a version that holds nothing but this load's own earlier work, so it writes without
    reading: a record loaded twice writes the same state and the same lookup entries. Redis runs
    each batch's commit while the next batch is read from Kafka.
    """
    tps = await partitions_of(settings, topic)
    consumer.assign(tps)
    begin: dict[TopicPartition, int] = await consumer.beginning_offsets(tps)
    end: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    export_id = await _last_complete_export(consumer, begin, end)
    if export_id is None:
        log.info("no complete snapshot on %s: starting from the upstream topics alone", topic)
        return Summary(None, 0, 0)

    async def resume() -> dict[TopicPartition, int | None]:
        """Seek to where the load got to; returns the positions stored (None: not begun)."""
        stored = await readmodel.positions(tps)
        await seek(consumer, {tp: max(begin[tp], stored[tp] or 0) for tp in tps})
        return stored

    stored = await resume()
    if all(offset is None for offset in stored.values()):
        await readmodel.drop_entities(collections)  # a fresh load: nothing may be there before it
    total = sum([end[tp] - await consumer.position(tp) for tp in tps])
    done = entities = positions = 0
    last_report = time.monotonic()
    committing: asyncio.Task[bool] | None = None  # the previous batch's commit
    try:
        while True:
            finished = await reached(consumer, end)
            if not finished:
                batches = await consumer.getmany(timeout_ms=1000, max_records=LOAD_BATCH)
                batch = _read_batch(batches, export_id.encode(), collections)
                writes = _writes(collections, batch.states)
            if committing is not None:
                committed, committing = await committing, None
                if not committed:  # another instance loads it too: carry on from where it got
                    stored = await resume()
                    continue
            if finished:
                break
            if not batch.new:
                continue
            committing = asyncio.create_task(
                readmodel.write(
                    {tp: stored[tp] for tp in batch.new},
                    {**batch.upstream, **batch.new},
                    writes,
                    bootstrapping=True,
                )
            )
            await asyncio.sleep(0)  # it sends the batch: Redis writes it while the next is read
            stored.update(batch.new)
            done += sum(len(records) for records in batches.values())
            entities, positions = entities + len(batch.states), positions + len(batch.upstream)
            if progress and time.monotonic() - last_report > 0.5:
                progress(done, total)
                last_report = time.monotonic()
    finally:
        if committing is not None:
            committing.cancel()
    if progress:
        progress(total, total)
    return Summary(export_id, entities, positions)


def _read_batch(
    batches: Mapping[TopicPartition, list[Record]],
    export_id: bytes,
    collections: Mapping[str, Collection[Any]],
) -> _Batch:
    batch = _Batch({}, {}, {})
    for tp, records in batches.items():
        batch.new[tp] = records[-1].offset + 1
        for record in records:
            headers = dict(record.headers)
            if headers.get(EXPORT) != export_id or record.key is None or record.value is None:
                continue
            kind = headers.get(KIND)
            if kind == b"entity":
                collection, key = record.key.decode().split(":", 1)
                if collection not in collections:
                    log.warning("snapshot entity of unknown collection %r skipped", collection)
                    continue
                batch.states[(collection, key)] = record.value
            elif kind == b"position":
                topic_name, partition = record.key.decode().rsplit(":", 1)
                batch.upstream[TopicPartition(topic_name, int(partition))] = int(record.value)
    return batch


def _writes(collections: Mapping[str, Collection[Any]], states: dict[EntityRef, bytes]) -> Writes:
    """The exported JSON `states` as they are: only collections with lookups decode them, to
    write their lookup entries."""
    writes = Writes(states=dict(states))
    for ref, raw in states.items():
        collection = collections[ref[0]]
        if collection.lookups:
            writes.relink(collection, ref, None, collection.loads(raw))
    return writes


async def _last_complete_export(
    consumer: AIOKafkaConsumer,
    begin: Mapping[TopicPartition, int],
    end: Mapping[TopicPartition, int],
) -> str | None:
    """The id of the newest export with its `end` record. An export writes that record last and
    then deletes the records before it, so it is near the end of its partition: read back from
    the end, further each time, until one is found (or the topic is read whole)."""
    tail = TAIL
    while True:
        start = {tp: max(begin[tp], end[tp] - tail) for tp in end}
        await seek(consumer, start)
        ends: list[tuple[str, int, str]] = []  # exported at, offset (a tie-break), export
        while not await reached(consumer, end):
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batches.values():
                for record in records:
                    headers = dict(record.headers)
                    if headers.get(KIND) == b"end":
                        at = orjson.loads(record.value)["exported_at"]
                        ends.append((at, record.offset, headers[EXPORT].decode()))
        if ends:
            return max(ends)[2]
        if start == begin:
            return None
        tail *= 8
