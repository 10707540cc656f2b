"""Versions of the read model: which one is live, and the life of each.

A version is created waiting for its bootstrap, loaded, then served; a rebuild writes the next one
while the live one serves, swaps the pointer, and drops the old one. While a snapshot export reads
the live version whole, or a grow copies it (growth.py), it holds the freeze: batch commits wait
(commit.py checks it), queries go on.
"""

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

from aiokafka import TopicPartition
from redis.asyncio import Redis

from .keyspace import FIRST_BUCKETS, LAYOUT, Keyspace
from .projection import Collection


class ReadModelLostError(Exception):
    """The read model is gone from Redis (restarted without persistence, or flushed), or another
    instance found it gone and is bootstrapping it again: it must be bootstrapped before use."""


class NewerLayoutError(Exception):
    """The live version was written in a layout newer than this release's (keyspace.LAYOUT): a
    newer release rebuilt the read model. This instance neither reads nor writes it: a release
    that reads it replaces this one."""

    def __init__(self, version: int, layout: int) -> None:
        super().__init__(
            f"the live read model (version {version}) is in layout {layout}, newer than the"
            f" {LAYOUT} this release reads: run a release that reads it"
        )


_INITIALISE = """
if redis.call('SET', KEYS[1], '1', 'NX') then
  redis.call('SET', KEYS[2], 'pending')
  redis.call('SET', KEYS[3], ARGV[1])
  redis.call('SET', KEYS[4], ARGV[2])
  return 1
end
return 0
"""


# Unless a position KEYS[i] (of ARGV[1]) is at or past its beginning ARGV[i + 1], unlink the other
# KEYS, a few hundred at a time (unpack() takes a few thousand values at most).
_CLEAR_FOR_LOAD = """
local n = tonumber(ARGV[1])
for i = 1, n do
  local stored = redis.call('GET', KEYS[i])
  if stored and tonumber(stored) >= tonumber(ARGV[i + 1]) then return 0 end
end
for first = n + 1, #KEYS, 500 do
  redis.call('UNLINK', unpack(KEYS, first, math.min(first + 499, #KEYS)))
end
return 1
"""


class Versions:
    """The versions of the read model whose keys are `keys`; `refresh()` moves `keys` to the live
    one, and with it every view that shares them (queries, batch commits)."""

    def __init__(self, redis: Redis, keys: Keyspace) -> None:
        self.redis = redis
        self.keys = keys
        # A version found readable: its number, layout and bucket count.
        self._readable: tuple[int, int, int] | None = None

    async def initialise(self) -> bool:
        """Point at version 1, marked as waiting for its bootstrap, if nothing does yet (both at
        once, so a second instance never sees one without the other); True when brand new."""
        first = self.keys.at(1)
        created = bool(
            await self.redis.eval(
                _INITIALISE,
                4,
                first.pointer,
                first.bootstrap,
                first.layout,
                first.bucket_count_key,
                LAYOUT,
                first.bucket_count,
            )
        )
        await self.refresh()
        return created

    async def layout(self) -> int:
        """The layout this version was written in (keyspace.LAYOUT); 1 when it does not say."""
        return int(await self.redis.get(self.keys.layout) or 1)

    async def mark_layout(self) -> None:
        """Record that this version is written in the current layout, with its bucket count."""
        await self.redis.mset(
            {self.keys.layout: LAYOUT, self.keys.bucket_count_key: self.keys.bucket_count}
        )

    async def awaits_bootstrap(self) -> bool:
        return await self.redis.get(self.keys.bootstrap) == b"pending"

    async def bootstrapped(self) -> None:
        await self.redis.set(self.keys.bootstrap, "done")

    async def refresh(self) -> bool:
        """Follow the version pointer; True when it moved. Raises ReadModelLostError when there is
        no pointer (call initialise() first), and NewerLayoutError, staying where it was, when the
        live version is in a layout newer than this release's."""
        current = await self.redis.get(self.keys.pointer)
        if current is None:
            self._readable = None  # whoever creates it again may be of another release
            raise ReadModelLostError(f"no read model version at {self.keys.pointer}")
        version = int(current)
        if self._readable is None or version != self._readable[0]:
            at = self.keys.at(version)
            stored = await self.redis.mget(at.layout, at.bucket_count_key)
            raw_layout, raw_buckets = cast(list[bytes | None], stored)
            layout, buckets = int(raw_layout or 1), int(raw_buckets or FIRST_BUCKETS)
            if layout > LAYOUT:
                raise NewerLayoutError(version, layout)
            self._readable = version, layout, buckets
        moved = version != self.keys.version
        self.keys.version, self.keys.in_layout, self.keys.bucket_count = self._readable
        return moved

    async def swap(self, version: int) -> None:
        """Make `version` the live one: instances follow within a second, projectors at their next
        batch (their commits check the pointer)."""
        await self.redis.set(self.keys.pointer, version)

    async def drop(self) -> int:
        """Delete every key of this version; returns how many. (A version has a few thousand
        keys per collection: its entities live in buckets.)"""
        keys = [key async for key in self.redis.scan_iter(match=self.keys.everything, count=1000)]
        return await self._unlink(keys)

    async def clear_for_load(
        self, collections: Mapping[str, Collection[Any]], begin: Mapping[TopicPartition, int]
    ) -> bool:
        """Delete the entities, lookups, histories and parked sequences of `collections` in this
        version (not its positions or markers), unless some of the export that begins at `begin`
        (per partition of the data topic) is loaded already: a stored position at or past its
        beginning. One script decides and deletes, so an instance that starts the same load a
        moment after another never deletes what the other has loaded since. True when cleared.
        (Their keys are known, so no SCAN walks the whole keyspace.)"""
        keys = [self.keys.parked]
        buckets = range(self.keys.bucket_count)
        for name, collection in collections.items():
            keys += [self.keys.bucket(name, bucket) for bucket in buckets]
            keys += [self.keys.history_bucket(name, bucket) for bucket in buckets]
            keys += [self.keys.parked_bucket(name, bucket) for bucket in buckets]
            for lookup in collection.lookups:
                keys += [self.keys.lookup_bucket(name, lookup, b) for b in buckets]
        positions = [self.keys.position(tp) for tp in begin]
        offsets = [str(offset) for offset in begin.values()]
        cleared = await self.redis.eval(
            _CLEAR_FOR_LOAD, len(positions) + len(keys), *positions, *keys, len(positions), *offsets
        )
        return bool(cleared)

    async def _unlink(self, keys: Sequence[str | bytes]) -> int:
        deleted = 0
        for start in range(0, len(keys), 1000):  # bounded commands
            deleted += await self.redis.unlink(*keys[start : start + 1000])
        return deleted

    @asynccontextmanager
    async def frozen(self, ttl_s: int) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
        """Hold the freeze for the block, refreshed to the live version; yields what extends it by
        another `ttl_s` (it lapses by itself if this process dies). Raises RuntimeError while
        another holds it."""
        holder = uuid.uuid4().hex
        if not await self.redis.set(self.keys.freeze, holder, nx=True, ex=ttl_s):
            raise RuntimeError("another snapshot export is running (its freeze is held)")
        try:
            await self.refresh()
            yield lambda: self.redis.expire(self.keys.freeze, ttl_s)
        finally:
            if await self.redis.get(self.keys.freeze) == holder.encode():
                await self.redis.delete(self.keys.freeze)
