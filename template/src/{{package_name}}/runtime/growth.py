"""Growing the read model: more buckets as its collections outgrow them.

Entities live in buckets (keyspace.py), which Redis stores compactly while each holds at most
`hash-max-listpack-entries` fields (512 as scripts/redis.sh sets it); past that a bucket becomes
a hash table, about twice the memory. A long listpack is slow too: Redis walks it to find a field.
And every bucket is a key of its own, which costs memory of its own. So a version starts with 1,024
buckets and records its count, and once the fields per bucket of a collection reach GROW_AT on
average (a sample of its buckets, every CHECK_EVERY_S), `watch` copies the live version into the
next one with enough buckets for fewer than half as many per bucket (4 times as many, more after a
burst) and swaps it in, as a rebuild does: commits wait on the freeze while it copies (queries go
on, on the version being copied), projectors follow the swap at their next batch, queries within a
second, and the old version is dropped. Each entity is copied a third of a time on average over a
collection's growth.

The copy moves fields between buckets and nothing else: entities with their histories, parked
events and lookup entries go to the bucket they belong in among the new count (bucket b's fields
go to b, or to b plus a multiple of the old count), everything else of the version (positions,
notes of events not applied, the index of parked entities, the bootstrap marker) is copied as it
is.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.typing import EncodableT

from .keyspace import INLINE_HISTORIES, MAX_BUCKETS, Keyspace
from .projection import Collection
from .readmodel import ReadModel
from .versions import Versions

log = logging.getLogger(__name__)

# Fields per bucket, on average. Redis finds a field in a listpack by walking it: in one measurement
# a batch's commit took Redis about 21 us an event with 20 fields a bucket, 26 with 40, 45 with 120.
GROW_AT = 64
CHECK_EVERY_S = 1.0
SAMPLED = 16  # buckets per collection read to estimate how full they are
FREEZE_TTL_S = 30  # extended as the copy goes: it lapses by itself if this process dies
COPIED_AT_ONCE = 64  # buckets read per round trip
GRACE_S = 5.0  # before the old version is dropped: instances move their queries within a second


@dataclass(frozen=True)
class Growth:
    """What a grow did."""

    version: int
    buckets: int
    seconds: float

    def __str__(self) -> str:
        return f"version {self.version} with {self.buckets} buckets in {self.seconds:.1f}s"


async def fullest(
    redis: Redis, keys: Keyspace, collections: Mapping[str, Collection[Any]]
) -> float:
    """The fields per bucket, on average, of the fullest collection of the version of `keys`
    (sampled)."""
    sampled = range(0, keys.bucket_count, max(1, keys.bucket_count // SAMPLED))
    async with redis.pipeline(transaction=False) as pipe:
        for name in collections:
            for bucket in sampled:
                pipe.hlen(keys.bucket(name, bucket))
        lengths = cast(list[int], await pipe.execute())
    per = len(sampled)
    sums = [sum(lengths[start : start + per]) for start in range(0, len(lengths), per)]
    return max(sums, default=0) / per


def enough(buckets: int, filled: float) -> int:
    """The bucket count, `buckets` times a power of 2, that holds less than half of GROW_AT per
    bucket where `buckets` hold `filled` on average (at most MAX_BUCKETS): 4 times as many, as a
    grow starts just past GROW_AT, so each entity is copied a third of a time over its life."""
    grown = buckets
    while grown < MAX_BUCKETS and filled * buckets / grown >= GROW_AT / 2:
        grown *= 2
    return grown


async def watch(
    readmodel: ReadModel, collections: Mapping[str, Collection[Any]], stopping: asyncio.Event
) -> None:
    """Every CHECK_EVERY_S, grow the live version once its collections fill its buckets."""
    while not stopping.is_set():
        with suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), CHECK_EVERY_S)
        keys = readmodel.keys.fixed()  # readmodel.keys follows the live version meanwhile
        if stopping.is_set() or keys.in_layout < INLINE_HISTORIES:
            continue  # a version of an older layout is upgraded at start first
        if await readmodel.versions.awaits_bootstrap():
            continue  # loading: what it loads is copied once it is done
        filled = await fullest(readmodel.redis, keys, collections)
        if filled < GROW_AT or keys.bucket_count >= MAX_BUCKETS:
            continue
        buckets, why = enough(keys.bucket_count, filled), f"{filled:.0f} entities per bucket"
        try:
            grown = await grow(readmodel, buckets, GRACE_S, of=keys, why=why)
        except RuntimeError as exc:  # a rebuild, an export or another instance's grow: later
            log.info("growth put off: %s", exc)
            continue
        log.info("read model grown into %s", grown)


async def grow(
    readmodel: ReadModel,
    buckets: int | None = None,
    grace_s: float = GRACE_S,
    *,
    of: Keyspace | None = None,
    why: str = "asked to",
) -> Growth:
    """Copy the live version into the next one with `buckets` buckets (a multiple of its own;
    default twice), swap it in and drop the old one. Raises RuntimeError while a rebuild or
    another grow runs, or an export holds the freeze, when the live version waits for its
    bootstrap or is of a layout before 3, and when it is no longer the version `of` (sized from
    it): another instance grew it meanwhile."""
    redis, live = readmodel.redis, readmodel.keys
    began = time.monotonic()
    await readmodel.versions.refresh()
    if not await redis.set(live.rebuilding, live.version + 1, nx=True, ex=FREEZE_TTL_S):
        raise RuntimeError("a rebuild or another grow is running")
    try:
        async with readmodel.versions.frozen(FREEZE_TTL_S) as keep_frozen:
            if await readmodel.versions.awaits_bootstrap():
                raise RuntimeError("the read model waits for its bootstrap")
            if of is not None and live.version != of.version:
                raise RuntimeError(f"version {live.version} is live since: grown or rebuilt")
            if live.in_layout < INLINE_HISTORIES:  # its histories' hashes would not move
                raise RuntimeError(f"layout {live.in_layout} is rebuilt at start, not grown")
            old = live.fixed()
            new = live.at(old.version + 1, buckets=buckets or 2 * old.bucket_count)
            if new.bucket_count <= old.bucket_count or new.bucket_count % old.bucket_count:
                raise ValueError(f"{new.bucket_count} buckets: no multiple of {old.bucket_count}")
            log.warning(
                "read model version %d (%s): copying it from %d buckets per collection into %d;"
                " commits wait meanwhile",
                old.version,
                why,
                old.bucket_count,
                new.bucket_count,
            )
            versions = Versions(redis, new)
            await versions.drop()  # what a grow that died may have left
            # And the version before the live one, left by a grow or rebuild that died before
            # it dropped it: a whole copy of the read model.
            await Versions(redis, live.at(old.version - 1)).drop()

            async def keep_going() -> None:
                await keep_frozen()
                await redis.expire(live.rebuilding, FREEZE_TTL_S)

            await _copy(redis, old, new, keep_going)
            await versions.mark_layout()
            await readmodel.versions.swap(new.version)
            await readmodel.versions.refresh()
        await asyncio.sleep(grace_s)
        await Versions(redis, old).drop()
    finally:
        await redis.delete(live.rebuilding)
    return Growth(new.version, new.bucket_count, time.monotonic() - began)


async def _copy(redis: Redis, old: Keyspace, new: Keyspace, keep_going: Any) -> None:
    """Every key of version `old` into version `new`: each field of a bucket into its bucket
    among `new`'s count, any other key as it is."""
    movers: dict[str, Callable[[int, bytes], tuple[str, bytes]]] = {}  # one per kind of bucket
    buckets: list[tuple[bytes, int, Callable[[int, bytes], tuple[str, bytes]]]] = []
    async for key in redis.scan_iter(match=old.everything, count=1000):
        relative = old.relative(key)
        if relative.startswith(("e:", "pk:", "lk:")):
            family, number = relative.rsplit(":", 1)
            move = movers.get(family) or movers.setdefault(family, new.mover(old, family))
            buckets.append((key, int(number), move))
        elif key not in (old.layout.encode(), old.bucket_count_key.encode()):
            await redis.copy(key, new.absolute(relative))
    for start in range(0, len(buckets), COPIED_AT_ONCE):
        chunk = buckets[start : start + COPIED_AT_ONCE]
        async with redis.pipeline(transaction=False) as pipe:
            for key, _, _ in chunk:
                pipe.hgetall(key)
            contents = cast(list[dict[bytes, bytes]], await pipe.execute())
        moved: dict[str, dict[EncodableT, EncodableT]] = {}
        for (_, bucket, move), fields in zip(chunk, contents, strict=True):
            for field, value in fields.items():
                hash_, name = move(bucket, field)
                moved.setdefault(hash_, {})[name] = value
        async with redis.pipeline(transaction=False) as pipe:
            for hash_, into in moved.items():
                pipe.hset(hash_, mapping=into)
            await pipe.execute()
        await keep_going()
