"""The Redis read model: entities, their list indexes and the consumer positions that produced them.

Key layout (all keys share the hash tag `{<prefix>}`, so one MULTI/EXEC may touch any of them, also
on Redis Cluster, where they all live in one slot):

    {<prefix>}:version                        the version queries read (a rebuild swaps it)
    {<prefix>}:freeze                         present while a snapshot export reads the model
    {<prefix>}:v<n>:e:<collection>:<key>      entity JSON
    {<prefix>}:v<n>:ix:<collection>           the collection's keys (sorted set, lexical order)
    {<prefix>}:v<n>:lk:<collection>:<lookup>:<value>   keys of the entities with that value (set)
    {<prefix>}:v<n>:pos:<topic>:<partition>   next offset to apply from that partition
    {<prefix>}:v<n>:bootstrap                 first-start state of the version (bootstrap.py)

A batch's entity writes and its new positions are committed in one MULTI/EXEC that WATCHes the
positions it started from, the entities it read and the version pointer: a consumer that lost its
partitions in a rebalance (its positions moved on), or whose version was swapped out by a rebuild,
aborts instead of writing.
"""

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from aiokafka import TopicPartition
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from .projection import Collection

EntityRef = tuple[str, str]  # (collection, key)


@dataclass(frozen=True, slots=True)
class Link:
    """An entry of a secondary lookup: `ref` has `value` under `lookup`."""

    ref: EntityRef
    lookup: str
    value: str


@dataclass
class Writes:
    """The outcome of folding a batch: new entity states (None deletes) and lookup changes."""

    states: dict[EntityRef, bytes | None] = field(default_factory=dict)
    linked: list[Link] = field(default_factory=list)
    unlinked: list[Link] = field(default_factory=list)


# Adds (+) or removes (-) an entity's key in the lookup sets named by KEYS.
_LINK = """
for i, key in ipairs(KEYS) do
  if ARGV[2 * i - 1] == '+' then
    redis.call('SADD', key, ARGV[2 * i])
  else
    redis.call('SREM', key, ARGV[2 * i])
  end
end
"""


def writes_for(
    collections: Mapping[str, Collection[Any]],
    before: Mapping[EntityRef, Any],
    after: Mapping[EntityRef, Any],
) -> Writes:
    """The writes that take entities from `before` to `after` (None: absent), lookups included."""
    writes = Writes()
    for ref, state in after.items():
        collection = collections[ref[0]]
        writes.states[ref] = None if state is None else collection.dumps(state)
        old_state = before.get(ref)
        for lookup, value_of in collection.lookups.items():
            old = None if old_state is None else value_of(old_state)
            new = None if state is None else value_of(state)
            if old != new:
                if old is not None:
                    writes.unlinked.append(Link(ref, lookup, old))
                if new is not None:
                    writes.linked.append(Link(ref, lookup, new))
    return writes


class ReadModel:
    """One version of the read model. `live` ones follow the version pointer; a rebuild writes a
    version that is not live yet."""

    def __init__(self, redis: Redis, prefix: str, *, version: int = 1, live: bool = True) -> None:
        self.redis = redis
        self.prefix = prefix
        self.live = live
        self._tag = "{" + prefix + "}"
        self.version = version

    def key(self, *parts: str) -> str:
        """A key of this service's, in its hash slot, outside any version."""
        return ":".join((self._tag, *parts))

    @property
    def version(self) -> int:
        return self._version

    @version.setter
    def version(self, version: int) -> None:
        self._version = version
        self._versioned = f"{self._tag}:v{version}:"  # built once: keys are made per entity

    def versioned(self, *parts: str) -> str:
        return self._versioned + ":".join(parts)

    @property
    def version_key(self) -> str:
        return self.key("version")

    @property
    def freeze_key(self) -> str:
        return self.key("freeze")

    def entity_key(self, collection: str, key: str) -> str:
        return f"{self._versioned}e:{collection}:{key}"

    def index_key(self, collection: str) -> str:
        return self.versioned("ix", collection)

    def lookup_key(self, collection: str, lookup: str, value: str) -> str:
        return self.versioned("lk", collection, lookup, value)

    def position_key(self, tp: TopicPartition) -> str:
        return self.versioned("pos", tp.topic, str(tp.partition))

    def at(self, version: int) -> "ReadModel":
        """Another version of the same read model, written by a rebuild: not live."""
        return ReadModel(self.redis, self.prefix, version=version, live=False)

    async def initialise(self) -> bool:
        """Point at version 1 if nothing does yet; True when this read model is brand new."""
        created = bool(await self.redis.set(self.version_key, 1, nx=True))
        await self.refresh()
        return created

    async def refresh(self) -> bool:
        """Follow the version pointer; True when it moved."""
        current = await self.redis.get(self.version_key)
        version = int(current) if current is not None else self.version
        moved, self.version = version != self.version, version
        return moved

    async def drop(self) -> int:
        """Delete every key of this version; returns how many."""
        deleted = 0
        batch: list[bytes] = []
        async for key in self.redis.scan_iter(match=self.versioned("*"), count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += await self.redis.unlink(*batch)
                batch = []
        if batch:
            deleted += await self.redis.unlink(*batch)
        return deleted

    async def get(self, collection: str, key: str) -> bytes | None:
        return cast(bytes | None, await self.redis.get(self.entity_key(collection, key)))

    async def page(
        self, collection: str, *, after: str | None, limit: int
    ) -> tuple[list[bytes], str | None]:
        """Entities in key order after the cursor `after`; also the cursor of the next page."""
        start = "-" if after is None else "(" + after
        keys = cast(
            list[bytes],
            await self.redis.zrangebylex(
                self.index_key(collection), start, "+", start=0, num=limit + 1
            ),
        )
        more = len(keys) > limit
        keys = keys[:limit]
        if not keys:
            return [], None
        values = cast(
            list[bytes | None],
            await self.redis.mget([self.entity_key(collection, key.decode()) for key in keys]),
        )
        # An entity deleted between the two reads is simply not listed.
        found = [value for value in values if value is not None]
        return found, keys[-1].decode() if more else None

    async def lookup(self, collection: str, lookup: str, value: str) -> list[bytes]:
        """Entities of `collection` whose `lookup` has `value`, in key order."""
        members = cast(
            set[bytes], await self.redis.smembers(self.lookup_key(collection, lookup, value))
        )
        keys = sorted(members)
        if not keys:
            return []
        values = cast(
            list[bytes | None],
            await self.redis.mget([self.entity_key(collection, key.decode()) for key in keys]),
        )
        return [value for value in values if value is not None]

    async def positions(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        if not tps:
            return {}
        raw = cast(list[bytes | None], await self.redis.mget([self.position_key(tp) for tp in tps]))
        return {
            tp: None if value is None else int(value) for tp, value in zip(tps, raw, strict=True)
        }

    async def commit(
        self,
        expected: Mapping[TopicPartition, int | None],
        new: Mapping[TopicPartition, int],
        entities: Sequence[EntityRef],
        fold: Callable[[list[bytes | None]], Awaitable[Writes]],
    ) -> bool:
        """Fold a batch onto the current states and write the result with the new positions.

        Returns False, writing nothing, when a stored position is no longer the one `expected`
        (another consumer has moved the partition on) or this version is no longer the live one.
        While a snapshot export holds the freeze, it waits. A concurrent write to an entity this
        batch read makes it re-read and fold again.
        """
        tps = list(expected)
        position_keys = [self.position_key(tp) for tp in tps]
        entity_keys = [self.entity_key(collection, key) for collection, key in entities]
        guards = [self.version_key, self.freeze_key] if self.live else []
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    watched = [*guards, *position_keys, *entity_keys]
                    await pipe.watch(*watched)
                    values = cast(list[bytes | None], await pipe.mget(watched))  # one round trip
                    if self.live:
                        version, frozen = values[:2]
                        if frozen is not None:  # a snapshot export is reading: wait for it
                            await pipe.reset()  # type: ignore[no-untyped-call]
                            await asyncio.sleep(0.1)
                            continue
                        if version is not None and int(version) != self.version:
                            return False  # a rebuild swapped versions: the caller re-seeks
                    stored = values[len(guards) : len(guards) + len(tps)]
                    if [None if v is None else int(v) for v in stored] != [
                        expected[tp] for tp in tps
                    ]:
                        return False
                    current = values[len(guards) + len(tps) :]
                    writes = await fold(current)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    self._queue(pipe, writes)
                    pipe.mset({self.position_key(tp): offset for tp, offset in new.items()})
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    def _queue(self, pipe: Pipeline, writes: Writes) -> None:
        upserts = {ref: value for ref, value in writes.states.items() if value is not None}
        deletes = [ref for ref, value in writes.states.items() if value is None]
        if upserts:
            pipe.mset({self.entity_key(*ref): value for ref, value in upserts.items()})
        if deletes:
            pipe.delete(*(self.entity_key(*ref) for ref in deletes))
        by_collection: dict[str, tuple[list[str], list[str]]] = {}
        for (collection, key), value in writes.states.items():
            added, removed = by_collection.setdefault(collection, ([], []))
            (removed if value is None else added).append(key)
        for collection, (added, removed) in by_collection.items():
            if added:
                pipe.zadd(self.index_key(collection), dict.fromkeys(added, 0))
            if removed:
                pipe.zrem(self.index_key(collection), *removed)
        links = [("-", link) for link in writes.unlinked] + [("+", link) for link in writes.linked]
        if links:  # one script call, not a command per link: packing commands is what costs
            keys = [self.lookup_key(link.ref[0], link.lookup, link.value) for _, link in links]
            args = [part for op, link in links for part in (op, link.ref[1])]
            pipe.eval(_LINK, len(keys), *keys, *args)
