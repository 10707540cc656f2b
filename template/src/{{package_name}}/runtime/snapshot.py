"""Snapshots of the read model on the private data topic: a first start loads one before going live.

Format. One export is a set of records, spread over the topic's partitions, each with the headers
`snapshot.export` (the export's id) and `snapshot.kind`:

    entity    key `<collection>:<entity key>`     value: the entity's JSON; header
                                                  `snapshot.history`: its history, if it has one
    hash      key `["<hash>", "<field>"]` (JSON)   value: as stored: parked events, the parked
                                                  index (keyspace.py), and the histories of
                                                  entities that do not exist, as stored in
                                                  layout 2 (`h:<collection>:<bucket>`)
    lookup    key `<collection>:<lookup>:<bucket>:<field>`
                                                  value: the lookup entry as stored (keyspace.py)
    position  key `<topic>:<partition>`           value: the next offset to apply there (ASCII)
    end       key `end`                           value: {"export", "entities", "positions",
                                                          "lookups", "layout", "buckets",
                                                          "exported_at"} (JSON)

The `end` record is written only once every other record of the export is acknowledged, so an export
without one is incomplete and ignored. Loading takes the last complete export: its entities, and its
positions as where the projector starts on the upstream topics (from the earliest retained event
where it has none). Once its `end` record is written, an export deletes the records before it.

The format is the same whatever the layout (keyspace.py); `layout` in the `end` record names the
layout exported (absent: before 3), `buckets` its bucket count (absent: 1024). Loading into a
version with another count puts each lookup entry and parked event in the bucket it has there. An
export of a layout before 3 carries every history as a `hash` record: loading it into a version that
keeps histories in the entities' fields merges each entity and history into its field, in whichever
order they come. Releases before layout 3 ignore the `snapshot.history` header: they load such an
export without the existing entities' histories.

Lookup entries are exported as they are stored, so loading writes them without decoding a single
entity. `lookups` in the `end` record names the lookups exported, per collection. Where a
collection's lookups are no longer those (added, removed or renamed since), or an older export has
no lookup records, loading computes them from the entities instead. A lookup that computes
something else under the same name needs a rebuild, as a changed projection does (the projector,
too, trusts that stored entries came from the current functions).

Exporting freezes the projector (not the queries) while it reads, so entities and positions agree.
It sends each hash's fields to one partition, one after the other, so a load writes them with few
HSETs.
Loading keeps its position in the data topic in Redis like any projection, so a crash resumes it.
"""

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from redis.asyncio import Redis

from .commit import EntityRef, Part, Writes, decoded
from .kafka import (
    Record,
    delete_records_before,
    end_offsets,
    partitions_of,
    reached,
    seek,
)
from .keyspace import (
    FIRST_BUCKETS,
    INLINE_HISTORIES,
    Keyspace,
    bucket_of,
    join_entity,
    split_entity,
)
from .projection import Collection
from .readmodel import ReadModel, fields_in
from .settings import ServiceSettings

log = logging.getLogger(__name__)

EXPORT = "snapshot.export"
KIND = "snapshot.kind"
HISTORY = "snapshot.history"
FREEZE_TTL_S = 30
ProgressCallback = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class Summary:
    export: str | None
    entities: int
    positions: int
    lookup_entries: int = 0  # exported; or loaded as they were exported


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
    redis, keys = readmodel.redis, readmodel.keys
    async with readmodel.versions.frozen(FREEZE_TTL_S) as keep_frozen:
        tps = await partitions_of(settings, topic)
        before = await end_offsets(settings, tps)
        headers = [(EXPORT, export_id.encode())]
        positions = await _positions(redis, keys)
        sent = [
            await producer.send(
                topic,
                str(offset).encode(),
                key=f"{tp.topic}:{tp.partition}".encode(),
                headers=[*headers, (KIND, b"position")],
            )
            for tp, offset in positions.items()
        ]
        # Every hash to export: its record kind, its key, and the key prefix of its records.
        hashes: list[tuple[bytes, bytes, str]] = []
        async for key in redis.scan_iter(match=keys.buckets(), count=1000):
            collection, _ = keys.parse_bucket(key)
            hashes.append((b"entity", key, collection))
        for pattern in keys.per_entity():  # as they are: a record's key is [hash, field]
            async for key in redis.scan_iter(match=pattern, count=1000):
                hashes.append((b"hash", key, keys.relative(key)))
        lookups: dict[str, set[str]] = {}
        async for key in redis.scan_iter(match=keys.lookup_buckets(), count=1000):
            collection, lookup, bucket = keys.parse_lookup_bucket(key)
            hashes.append((b"lookup", key, f"{collection}:{lookup}:{bucket}"))
            lookups.setdefault(collection, set()).add(lookup)
        names = [key for _, key, _ in hashes]
        total = await fields_in(redis, names)
        exported: Counter[bytes] = Counter()
        # Each hash's fields go to one partition, one after the other (the hashes take turns), in
        # batches built here: a load then writes a batch's fields of a hash in one HSET, and the
        # producer hashes no key and makes no future per record.
        filling: dict[int, Any] = {}  # partition -> its aiokafka BatchBuilder being filled
        async for n, fields in _pages(redis, names):
            kind, _, prefix = hashes[n]
            partition = tps[n % len(tps)].partition
            batch = filling.get(partition) or producer.create_batch()
            of_kind = [*headers, (KIND, kind)]
            for name, value in fields.items():
                record_kind, record_headers = kind, of_kind
                if kind == b"hash":
                    record_key = orjson.dumps([prefix, name.decode()])
                elif kind == b"lookup":
                    record_key = f"{prefix}:{name.decode()}".encode()
                else:  # an entity, with its history in a header; or a history alone
                    json, history = split_entity(value)
                    if json is None:  # as a layout before 3 stored it, for any release to load
                        bucket = bucket_of(name, keys.bucket_count)
                        hash_ = keys.relative(keys.history_bucket(prefix, bucket))
                        record_key, value = orjson.dumps([hash_, name.decode()]), history or b""
                        record_kind, record_headers = b"hash", [*headers, (KIND, b"hash")]
                    else:
                        record_key, value = f"{prefix}:{name.decode()}".encode(), json
                        if history is not None:
                            record_headers = [*of_kind, (HISTORY, history)]
                record = {"key": record_key, "value": value, "headers": record_headers}
                while batch.append(**record, timestamp=None) is None:  # full
                    sent.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                exported[record_kind] += 1
            filling[partition] = batch
            if len(sent) >= 50:
                await asyncio.gather(*sent)
                sent = []
                await keep_frozen()
                if progress:
                    progress(exported.total(), total)
        for partition, batch in filling.items():
            sent.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*sent)
        await producer.flush()
        end = {
            "export": export_id,
            "entities": exported[b"entity"],
            "positions": len(positions),
            "lookups": {collection: sorted(names) for collection, names in lookups.items()},
            "layout": keys.in_layout,
            "buckets": keys.bucket_count,
            "exported_at": datetime.now(UTC).isoformat(),
        }
        await producer.send_and_wait(
            topic, orjson.dumps(end), key=b"end", headers=[*headers, (KIND, b"end")]
        )
        if progress:
            progress(total, total)
    try:  # the records of earlier exports: loading ignores them anyway
        await delete_records_before(settings, before)
    except Exception as exc:  # retention removes them eventually
        log.warning("could not delete earlier snapshot records: %r", exc)
    return Summary(export_id, exported[b"entity"], len(positions), exported[b"lookup"])


async def _pages(redis: Redis, keys: list[bytes]) -> AsyncIterator[tuple[int, dict[bytes, bytes]]]:
    """The fields of each of `keys` (by its index), a page at a time. The first pages of 64 hashes
    come in one round trip: a compact hash answers whole, a large one in pages of about 1,000."""
    for start in range(0, len(keys), 64):
        group = keys[start : start + 64]
        async with redis.pipeline(transaction=False) as pipe:
            for key in group:
                pipe.hscan(key, 0, count=1000)
            pages = await pipe.execute()
        for n, (key, (cursor, fields)) in enumerate(zip(group, pages, strict=True), start):
            yield n, fields
            while cursor:
                page = await redis.hscan(key, cursor, count=1000)
                cursor, fields = cast(tuple[int, dict[bytes, bytes]], page)
                yield n, fields


async def _positions(redis: Redis, keys: Keyspace) -> dict[TopicPartition, int]:
    """Every position the version stores."""
    found = [key async for key in redis.scan_iter(match=keys.positions, count=1000)]
    values = cast(list[bytes], await redis.mget(found)) if found else []
    return {keys.parse_position(key): int(value) for key, value in zip(found, values, strict=True)}


# ---------------------------------------------------------------------------------------- load
# Records per Redis commit. Smaller batches cost less CPU a record (fewer objects alive at once for
# the collector to walk): about 3.5 us against 4.3 with 2,000, measured loading 100,000 records.
LOAD_BATCH = 500
TAIL = 64  # records per partition first read back from the end, looking for the last export


@dataclass
class _Batch:
    """What one batch of data topic records writes."""

    new: dict[TopicPartition, int] = field(default_factory=dict)  # positions on the data topic
    upstream: dict[TopicPartition, int] = field(default_factory=dict)  # on the upstream topics
    hashes: dict[str, dict[str, bytes]] = field(default_factory=dict)  # entities, lookup entries
    merged: list[tuple[EntityRef, Part, bytes]] = field(default_factory=list)  # their parts
    entities: int = 0
    lookup_entries: int = 0
    unindexed: dict[EntityRef, bytes] = field(default_factory=dict)  # lookups to compute


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
    each batch's commit while the next batch is read from Kafka. When a newer export deletes the
    records being loaded, OffsetOutOfRangeError is raised (the consumer does not skip them); a
    load run again then starts afresh from the newer export.
    """
    tps, begin, end, last = await _newest_export(consumer, settings, topic)
    if last is None:
        log.info("no complete snapshot on %s: starting from the upstream topics alone", topic)
        return Summary(None, 0, 0)
    export_id = last["export"]
    read = _Reader(readmodel.keys, collections, last)

    async def resume() -> dict[TopicPartition, int | None]:
        """Seek to where the load got to; returns the positions stored (None: not begun)."""
        stored = await readmodel.batches.positions(tps)
        await seek(consumer, {tp: max(begin[tp], stored[tp] or 0) for tp in tps})
        return stored

    # Nothing of this export loaded yet (a fresh load, or one resumed after a newer export replaced
    # the one it had begun, whose records are deleted): what the version holds goes first.
    await readmodel.versions.clear_for_load(collections, begin)
    stored = await resume()
    total = sum([end[tp] - await consumer.position(tp) for tp in tps])
    done = entities = positions = lookup_entries = 0
    last_report = time.monotonic()
    committing: asyncio.Task[bool] | None = None  # the previous batch's commit
    try:
        while True:
            finished = await reached(consumer, end)
            if not finished:
                batches = await consumer.getmany(timeout_ms=1000, max_records=LOAD_BATCH)
                # getmany returns buffered records without yielding: between stages, let the loop
                # send more of the previous batch's commit, or Redis waits for it meanwhile.
                await asyncio.sleep(0)
                batch = read(batches)
                await asyncio.sleep(0)
                writes = _writes(collections, batch)
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
                readmodel.batches.write(
                    {tp: stored[tp] for tp in batch.new},
                    {**batch.upstream, **batch.new},
                    writes,
                    bootstrapping=True,
                )
            )
            await asyncio.sleep(0)  # it sends the batch: Redis writes it while the next is read
            stored.update(batch.new)
            done += sum(len(records) for records in batches.values())
            entities, positions = entities + batch.entities, positions + len(batch.upstream)
            lookup_entries += batch.lookup_entries
            if progress and time.monotonic() - last_report > 0.5:
                progress(done, total)
                last_report = time.monotonic()
    finally:
        if committing is not None:
            committing.cancel()
    if progress:
        progress(total, total)
    return Summary(export_id, entities, positions, lookup_entries)


class _Reader:
    """Reads the records of one export into what they write.

    An export sends a hash's fields one after the other, so a batch's records group into a few
    HSETs of many fields. Lookup entries are taken as they were exported where the collection's
    lookups are still the ones exported (`end` names them; older exports have none); the entities
    of other collections with lookups are decoded, to compute theirs.
    """

    def __init__(
        self, keys: Keyspace, collections: Mapping[str, Collection[Any]], end: dict[str, Any]
    ) -> None:
        self._export = end["export"].encode()
        exported = end.get("lookups", {})
        indexed = {name for name, collection in collections.items() if collection.lookups}
        self._as_exported = {
            name
            for name in indexed
            if set(exported.get(name, ())) == collections[name].lookups.keys()
        }
        self._unindexed = indexed - self._as_exported
        self._keys = keys
        self._inline = keys.inline_histories
        # Entities of an export before layout 3 meet their histories in Redis (commit.py merges).
        self._merge = self._inline and end.get("layout", 1) < INLINE_HISTORIES
        self._buckets = {  # per collection, the key of each of its buckets
            name: [keys.bucket(name, bucket) for bucket in range(keys.bucket_count)]
            for name in collections
        }
        self._lookups: dict[str, str] = {}  # `<collection>:<lookup>:<bucket>` -> its key
        # Exported with another bucket count: lookup entries and parked events move bucket.
        buckets = end.get("buckets", FIRST_BUCKETS)
        self._exported = None if buckets == keys.bucket_count else keys.at(keys.version, buckets)
        self._movers: dict[str, Callable[[int, bytes], tuple[str, bytes]]] = {}

    def __call__(self, batches: Mapping[TopicPartition, list[Record]]) -> _Batch:
        batch = _Batch()
        for tp, records in batches.items():
            batch.new[tp] = records[-1].offset + 1
            for record in records:
                export = kind = history = None
                for name, value in record.headers:  # not dict(): this loop is most of the work
                    if name == KIND:
                        kind = value
                    elif name == EXPORT:
                        export = value
                    elif name == HISTORY:
                        history = value
                if export != self._export or record.key is None or record.value is None:
                    continue
                if kind == b"entity":
                    self._entity(batch, record.key, record.value, history)
                elif kind == b"lookup":
                    hashed, entry = record.key.decode().rsplit(":", 1)
                    if hashed.split(":", 1)[0] in self._as_exported:
                        if self._exported is None:
                            key = self._lookups.get(hashed) or self._lookup_key(hashed)
                        else:
                            family, bucket = hashed.rsplit(":", 1)
                            key, moved = self._moved(f"lk:{family}", int(bucket), entry.encode())
                            entry = moved.decode()
                        batch.hashes.setdefault(key, {})[entry] = record.value
                        batch.lookup_entries += 1
                elif kind == b"hash":  # parked events, histories kept apart
                    relative, name = orjson.loads(record.key)
                    hash_ = self._keys.absolute(relative)
                    collection = self._keys.parse_history_bucket(hash_) if self._inline else None
                    if self._exported is not None and relative.startswith("pk:"):
                        family, bucket = relative.rsplit(":", 1)
                        hash_, _ = self._moved(family, int(bucket), name.encode())
                    if collection is None:
                        batch.hashes.setdefault(hash_, {})[name] = record.value
                    else:  # into its entity's field, wherever the entity comes from
                        batch.merged.append(((collection, name), "history", record.value))
                elif kind == b"position":
                    topic_name, partition = record.key.decode().rsplit(":", 1)
                    batch.upstream[TopicPartition(topic_name, int(partition))] = int(record.value)
        return batch

    def _lookup_key(self, hashed: str) -> str:
        collection, rest = hashed.split(":", 1)
        lookup, bucket = rest.rsplit(":", 1)
        key = self._lookups[hashed] = self._keys.lookup_bucket(collection, lookup, int(bucket))
        return key

    def _moved(self, family: str, bucket: int, field: bytes) -> tuple[str, bytes]:
        """The hash and field of this version of `field` of the exported `family`'s `bucket`."""
        assert self._exported is not None
        move = self._movers.get(family) or self._movers.setdefault(
            family, self._keys.mover(self._exported, family)
        )
        return move(bucket, field)

    def _entity(self, batch: _Batch, raw_key: bytes, value: bytes, history: bytes | None) -> None:
        prefix, _, raw = raw_key.partition(b":")  # <collection>:<entity key>
        collection = prefix.decode()
        buckets = self._buckets.get(collection)
        if buckets is None:
            log.warning("snapshot entity of unknown collection %r skipped", collection)
            return
        key, bucket = raw.decode(), bucket_of(raw, self._keys.bucket_count)
        if not self._inline:
            batch.hashes.setdefault(buckets[bucket], {})[key] = value
            if history is not None:
                history_bucket = self._keys.history_bucket(collection, bucket)
                batch.hashes.setdefault(history_bucket, {})[key] = history
        elif self._merge:  # its history, if any, comes in a record of its own
            batch.merged.append(((collection, key), "json", value))
        else:
            batch.hashes.setdefault(buckets[bucket], {})[key] = join_entity(value, history) or b""
        batch.entities += 1
        if collection in self._unindexed:
            batch.unindexed[(collection, key)] = value


def _writes(collections: Mapping[str, Collection[Any]], batch: _Batch) -> Writes:
    """The exported entities and lookup entries as they are; only the entities of collections
    whose lookups must be computed again are decoded, to write those."""
    writes = Writes(hashes=batch.hashes, merged=batch.merged)
    for ref, entity in decoded(collections, batch.unindexed).items():
        writes.relink(collections[ref[0]], ref, None, entity)
    return writes


async def last_positions(
    consumer: AIOKafkaConsumer, settings: ServiceSettings, topic: str
) -> dict[TopicPartition, int] | None:
    """The upstream positions of the last complete export of `topic`, which a load would start
    from (None: no complete export). An export sends its positions before anything else, so on
    each partition they come before its other records: read from the start until another record
    of the export."""
    _, begin, end, last = await _newest_export(consumer, settings, topic)
    if last is None:
        return None
    export = last["export"].encode()
    await seek(consumer, begin)
    positions: dict[TopicPartition, int] = {}
    reading = {tp: offset for tp, offset in end.items() if offset > begin[tp]}
    while reading and not await reached(consumer, reading):
        batches = await consumer.getmany(*reading, timeout_ms=1000, max_records=5000)
        for tp, records in batches.items():
            for record in records:
                headers = dict(record.headers)
                if headers.get(EXPORT) != export or record.key is None or record.value is None:
                    continue
                if headers.get(KIND) != b"position":
                    reading.pop(tp, None)  # the export's positions on it are all read
                    break
                name, partition = record.key.decode().rsplit(":", 1)
                positions[TopicPartition(name, int(partition))] = int(record.value)
    return positions


async def _newest_export(
    consumer: AIOKafkaConsumer, settings: ServiceSettings, topic: str
) -> tuple[
    list[TopicPartition],
    dict[TopicPartition, int],
    dict[TopicPartition, int],
    dict[str, Any] | None,
]:
    """`topic`'s partitions, assigned to `consumer`, where each begins and ends, and the `end`
    record of its newest complete export (None: none)."""
    tps = await partitions_of(settings, topic)
    consumer.assign(tps)
    begin: dict[TopicPartition, int] = await consumer.beginning_offsets(tps)
    end: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    return tps, begin, end, await _last_complete_export(consumer, begin, end)


async def _last_complete_export(
    consumer: AIOKafkaConsumer,
    begin: Mapping[TopicPartition, int],
    end: Mapping[TopicPartition, int],
) -> dict[str, Any] | None:
    """The `end` record of the newest complete export. An export writes that record last and
    then deletes the records before it, so it is near the end of its partition: read back from
    the end, further each time, until one is found (or the topic is read whole)."""
    tail = TAIL
    while True:
        start = {tp: max(begin[tp], end[tp] - tail) for tp in end}
        await seek(consumer, start)
        ends: list[tuple[str, int, bytes]] = []  # exported at, offset (a tie-break), record
        while not await reached(consumer, end):
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batches.values():
                for record in records:
                    headers = dict(record.headers)
                    if headers.get(KIND) == b"end":
                        at = orjson.loads(record.value)["exported_at"]
                        ends.append((at, record.offset, record.value))
        if ends:
            return cast(dict[str, Any], orjson.loads(max(ends)[2]))
        if start == begin:
            return None
        tail *= 8
