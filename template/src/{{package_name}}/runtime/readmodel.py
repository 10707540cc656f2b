"""The Redis read model: what routes and handlers read (Queries), and the view the machinery holds.

A view is the read model's keys (keyspace.py), following the live version or fixed on one a rebuild
writes, and what is done with them, by purpose: queries here; batch commits in commit.py; versions
(initialise, refresh, swap, drop) in versions.py. They share the view's keys, so when the version
moves, all of them move with it.

Listing walks the entity buckets in order, each bucket's keys sorted, so pages come in a stable
order. A cursor names a bucket and a key: once the buckets doubled (growth.py), what its bucket held
is in it and in one after every old bucket, so a listing that spans a growth misses nothing and may
list again some of what it listed before. Lookup values that share a hash field are told apart when
read, by the entity's own value.
"""

from collections.abc import Sequence
from typing import Any, Generic, NamedTuple, TypeVar, cast

import orjson
from aiokafka import TopicPartition
from pydantic import BaseModel
from redis.asyncio import Redis

from .commit import Batches, stored_positions
from .keyspace import FIRST_BUCKETS, Keyspace, entity_json
from .projection import Collection
from .redis import hget_each
from .versions import Versions

# What page cursors look like (`<bucket>:<key>`, the bucket a number of up to 7 digits: room for
# any count a version may grow to, keyspace.MAX_BUCKETS), for query parameters to declare: exactly
# what `_cursor` accepts. A bucket past the version's count is past the end: its page is empty.
CURSOR_PATTERN = r"^(0|[1-9][0-9]{0,6}):.+$"


class InvalidCursorError(ValueError):
    """A page cursor this read model did not hand out."""


# Up to ARGV[3] entities of the buckets KEYS (numbered from ARGV[1]) in (bucket, key) order,
# skipping keys up to ARGV[2] in the first bucket: a flat list of bucket, key, entity JSON. A field
# holds the JSON up to a NUL byte (its history follows), and none when it starts with one.
_PAGE = """
local first, after, limit = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local out = {}
for i, bucket in ipairs(KEYS) do
  local entries = redis.call('HGETALL', bucket)
  local keys, values = {}, {}
  for j = 1, #entries, 2 do
    local cut = string.find(entries[j + 1], '\\0', 1, true)
    if cut ~= 1 and (i > 1 or entries[j] > after) then
      keys[#keys + 1] = entries[j]
      values[entries[j]] = cut and string.sub(entries[j + 1], 1, cut - 1) or entries[j + 1]
    end
  end
  table.sort(keys)
  for _, key in ipairs(keys) do
    if #out >= 3 * limit then return out end
    out[#out + 1] = first + i - 1
    out[#out + 1] = key
    out[#out + 1] = values[key]
  end
end
return out
"""


# How many fields of the hashes KEYS hold an entity (not only a history: those start with NUL).
_COUNT = """
local count = 0
for _, bucket in ipairs(KEYS) do
  for _, value in ipairs(redis.call('HVALS', bucket)) do
    if string.byte(value, 1) ~= 0 then count = count + 1 end
  end
end
return count
"""

M = TypeVar("M", bound=BaseModel)


class StoredPage(NamedTuple):
    """A page of entities as stored (their JSON) and the next page's cursor (None at the end)."""

    items: list[bytes]
    next_cursor: str | None

    def json(self) -> bytes:
        """The page as a `Page` of its collection's model, without decoding the entities."""
        return b'{"items":[%b],"next_cursor":%b}' % (
            b",".join(self.items),
            orjson.dumps(self.next_cursor),
        )


class Page(BaseModel, Generic[M]):
    """What a route answering `StoredPage.json()` declares: `response_model=Page[Persona]`."""

    items: list[M]
    next_cursor: str | None


class Queries:
    """The read model as routes and command handlers see it: reads only. Commits, drops and
    version changes belong to the machinery; this view follows the live version as it moves."""

    __slots__ = ("_keys", "_redis")

    def __init__(self, redis: Redis, keys: Keyspace) -> None:
        self._redis = redis
        self._keys = keys

    async def positions(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The next offset the read model applies from each partition (None: none yet)."""
        return await stored_positions(self._redis, self._keys, tps)

    async def unapplied(self, positions: Sequence[tuple[str, int, int]]) -> list[bytes | None]:
        """What is noted of each event at `positions` (topic, partition, offset) that was not
        applied, where its slot holds a note (keyspace.unapplied)."""
        return await hget_each(self._redis, [self._keys.unapplied(*p) for p in positions])

    async def get(self, collection: Collection[Any] | str, key: str) -> bytes | None:
        """The stored JSON of one entity, or None."""
        slot = self._keys.entity(_name(collection), key)
        return entity_json(cast(bytes | None, await self._redis.hget(*slot)))

    async def page(
        self, collection: Collection[Any] | str, *, after: str | None, limit: int
    ) -> StoredPage:
        """Up to `limit` entities' JSON after the cursor `after`, and the next page's cursor (None
        at the end); a cursor must match CURSOR_PATTERN, else InvalidCursorError (a 422). The
        order is stable: by bucket, then by key."""
        name = _name(collection)
        buckets = self._keys.bucket_count
        bucket, key = (0, "") if after is None else _cursor(after)
        found: list[tuple[int, bytes, bytes]] = []
        chunk = 256  # buckets per script call
        while len(found) <= limit and bucket < buckets:
            last = min(bucket + chunk, buckets)
            keys = [self._keys.bucket(name, b) for b in range(bucket, last)]
            left = limit + 1 - len(found)
            flat = cast(
                list[Any], await self._redis.eval(_PAGE, len(keys), *keys, bucket, key, left)
            )
            found += [(int(flat[i]), flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]
            bucket, key = last, ""
        more = len(found) > limit
        found = found[:limit]
        items = [value for _, _, value in found]
        if not more or not found:
            return StoredPage(items, None)
        last_bucket, last_key, _ = found[-1]
        return StoredPage(items, f"{last_bucket}:{last_key.decode()}")

    async def lookup(self, collection: Collection[Any], lookup: str, value: str) -> list[bytes]:
        """The JSON of the entities whose `lookup` has `value`, in key order."""
        slot = self._keys.lookup(collection.name, lookup, value)
        raw = cast(bytes | None, await self._redis.hget(*slot))
        if raw is None:
            return []
        keys = orjson.loads(raw) if raw.startswith(b"[") else [raw.decode()]
        slots = [self._keys.entity(collection.name, key) for key in sorted(keys)]
        found = await hget_each(self._redis, slots)
        value_of = collection.lookups[lookup]
        # Skipped: values that share the hash, and entities deleted between the two reads.
        entities = [entity_json(stored) for stored in found]
        return [
            entity for entity in entities if entity and value_of(collection.loads(entity)) == value
        ]

    async def count(self, collection: Collection[Any] | str | None = None) -> int:
        """How many entities `collection` (or every collection) holds: it reads them all."""
        pattern = self._keys.buckets("*" if collection is None else _name(collection))
        buckets = [key async for key in self._redis.scan_iter(match=pattern, count=1000)]
        counts = [
            int(await self._redis.eval(_COUNT, len(chunk), *chunk))
            for chunk in (buckets[start : start + 64] for start in range(0, len(buckets), 64))
        ]
        return sum(counts)


async def fields_in(redis: Redis, hashes: Sequence[str | bytes]) -> int:
    """How many fields the `hashes` hold together (one round trip)."""
    async with redis.pipeline(transaction=False) as pipe:
        for key in hashes:
            pipe.hlen(key)
        return sum(await pipe.execute())


def _cursor(after: str) -> tuple[int, str]:
    """A cursor's bucket and key, exactly as `page` writes them: anything else is refused, rather
    than read as some other position (`000001:` once gave an empty page)."""
    bucket, colon, key = after.partition(":")
    canonical = bucket.isascii() and bucket.isdigit() and str(int(bucket)) == bucket
    if not colon or not key or not canonical or len(bucket) > 7:
        shown = after if len(after) <= 64 else f"{after[:64]}..."
        raise InvalidCursorError(f"not a cursor this service handed out: {shown!r}")
    return int(bucket), key


def _name(collection: Collection[Any] | str) -> str:
    return collection if isinstance(collection, str) else collection.name


class ReadModel:
    """One view of the read model in Redis: `live` follows the version pointer; one that is not
    is the version a rebuild writes."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        *,
        version: int = 1,
        live: bool = True,
        buckets: int = FIRST_BUCKETS,
        queries_redis: Redis | None = None,
    ) -> None:
        self.redis = redis
        self.keys = Keyspace(prefix, version, buckets=buckets)
        self.live = live
        self.queries = Queries(queries_redis or redis, self.keys)  # routes read on their own pool
        self.batches = Batches(redis, self.keys, live=live)
        self.versions = Versions(redis, self.keys)

    def at(self, version: int, buckets: int = FIRST_BUCKETS) -> "ReadModel":
        """Another version of the same read model, written by a rebuild: not live."""
        return ReadModel(self.redis, self.keys.prefix, version=version, live=False, buckets=buckets)
