"""The Redis read model: entities, their lookups and the consumer positions that produced them.

Key layout (all keys share the hash tag `{<prefix>}`, so one script may touch any of them, also on
Redis Cluster, where they all live in one slot):

    {<prefix>}:version                          the version queries read (a rebuild swaps it)
    {<prefix>}:freeze                           present while a snapshot export reads the model
    {<prefix>}:v<n>:e:<collection>:<bucket>     hash: entity key -> entity JSON
    {<prefix>}:v<n>:lk:<collection>:<lookup>:<bucket>   hash: value hash -> entity key(s)
    {<prefix>}:v<n>:pos:<topic>:<partition>     next offset to apply from that partition
    {<prefix>}:v<n>:bootstrap                   first-start state of the version (service.py)

Entities live in BUCKETS hashes per collection (bucket = crc32(key) % BUCKETS), not a key each: a
small hash is stored as one compact listpack, where a key per entity costs ~100 bytes of overhead on
top of its JSON. Listing walks the buckets in order, each bucket's keys sorted, so pages come in a
stable order. For the compact encoding, Redis' `hash-max-listpack-value` must exceed the largest
entity JSON and `hash-max-listpack-entries` the entities per bucket (scripts/redis.sh and
compose.yaml set 1024 and 512; without them it is still correct, only larger).

Lookups are stored by a hash of the value, not the value: crc32 picks the bucket and the rest of
it is the field, a small integer that a listpack stores in 5 bytes. The entity key is stored as
it is, or a JSON list of keys when several share the field. Values that share it are told apart
when read, by the entity's own value.

A batch is committed by one script that checks, then writes: the positions it started from, the
version pointer and the entities it read must be as it read them, else it writes nothing. So a
consumer that lost its partitions in a rebalance (its positions moved on), or whose version was
swapped out by a rebuild, aborts; one whose entity another consumer wrote meanwhile (joins) folds
again. (WATCH would do the same, but Redis checks WATCHed keys against each other: a batch's few
hundred keys cost milliseconds.)
"""

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Generic, NamedTuple, TypeVar, cast

import orjson
from aiokafka import TopicPartition
from pydantic import BaseModel
from redis.asyncio import Redis

from .projection import Collection

EntityRef = tuple[str, str]  # (collection, key)
M = TypeVar("M", bound=BaseModel)

# Fixed for a layout: 1024 buckets of up to 512 entities keep 500k entities per collection compact;
# beyond that the buckets become hash tables: still correct, less compact.
BUCKETS = 1024


# What page cursors look like (`<bucket>:<key>`), for query parameters to declare.
CURSOR_PATTERN = r"^[0-9]+:"


class InvalidCursorError(ValueError):
    """A page cursor this read model did not hand out."""


class ReadModelLostError(Exception):
    """The read model is gone from Redis (restarted without persistence, or flushed), or another
    instance found it gone and is bootstrapping it again: it must be bootstrapped before use."""


class Link(NamedTuple):  # a tuple: a batch makes one per lookup change
    """An entry of a secondary lookup: `ref` has `value` under `lookup`."""

    ref: EntityRef
    lookup: str
    value: str


@dataclass
class Writes:
    """The outcome of folding a batch: new entity states (None deletes) and lookup changes; and,
    from a snapshot, hashes' fields written as they were exported."""

    states: dict[EntityRef, bytes | None] = field(default_factory=dict)
    linked: list[Link] = field(default_factory=list)
    unlinked: list[Link] = field(default_factory=list)
    hashes: dict[str, dict[str, bytes]] = field(default_factory=dict)  # hash -> field -> value

    def relink(self, collection: Collection[Any], ref: EntityRef, old: Any, new: Any) -> None:
        """Add the lookup changes of `ref` going from state `old` to `new` (None: absent)."""
        for lookup, value_of in collection.lookups.items():
            old_value = None if old is None else value_of(old)
            new_value = None if new is None else value_of(new)
            if old_value != new_value:
                if old_value is not None:
                    self.unlinked.append(Link(ref, lookup, old_value))
                if new_value is not None:
                    self.linked.append(Link(ref, lookup, new_value))


_INITIALISE = """
if redis.call('SET', KEYS[1], '1', 'NX') then
  redis.call('SET', KEYS[2], 'pending')
  return 1
end
return 0
"""

# GETs the first ARGV[1] KEYS, then HGETs each further key's field (ARGV[2], ...).
_READ = """
local n = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  if i <= n then
    out[i] = redis.call('GET', key)
  else
    out[i] = redis.call('HGET', key, ARGV[i - n + 1])
  end
end
return out
"""

# Commits a batch if what it was folded from still holds, in five parts whose sizes are ARGV[1..5]:
# positions expected (KEYS: position; ARGV: offset, '' for none), positions written (position;
# offset), entities read (hash; field, and JSON or '' when absent: JSON is never empty), entities
# written (hash; field, JSON or '' to delete), and hashes written as they are (hash; how many
# fields, then field, value pairs: a snapshot's, in one HSET per hash). The lookup changes follow
# (hash; '+' or '-', field, entity key): one entity key is stored as it is, several (or one that
# starts with '[') as a JSON list.
# KEYS[1..3] are the version pointer, the freeze and the bootstrap marker; ARGV[6] is the version
# ('' when not live), ARGV[7] '1' when a pending bootstrap must stop the commit. Returns 'ok', or
# what stopped it: 'frozen', 'pending', 'moved' (positions or version) or 'changed'.
_COMMIT = """
local expected, written, read, states, hashes = tonumber(ARGV[1]), tonumber(ARGV[2]),
  tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if ARGV[6] ~= '' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return 'frozen' end
  if ARGV[7] == '1' and redis.call('GET', KEYS[3]) == 'pending' then return 'pending' end
  if redis.call('GET', KEYS[1]) ~= ARGV[6] then return 'moved' end
end
local k, a = 3, 7
for i = 1, expected do
  if (redis.call('GET', KEYS[k + i]) or '') ~= ARGV[a + i] then return 'moved' end
end
local positions, entities = k + expected, a + expected + written
for i = 1, read do
  local json = redis.call('HGET', KEYS[positions + written + i], ARGV[entities + 2 * i - 1])
  if (json or '') ~= ARGV[entities + 2 * i] then return 'changed' end
end
for i = 1, written do
  redis.call('SET', KEYS[positions + i], ARGV[a + expected + i])
end
k, a = positions + written + read, entities + 2 * read
for i = 1, states do
  if ARGV[a + 2 * i] == '' then
    redis.call('HDEL', KEYS[k + i], ARGV[a + 2 * i - 1])
  else
    redis.call('HSET', KEYS[k + i], ARGV[a + 2 * i - 1], ARGV[a + 2 * i])
  end
end
k, a = k + states, a + 2 * states
for i = 1, hashes do
  local n = tonumber(ARGV[a + 1])
  redis.call('HSET', KEYS[k + i], unpack(ARGV, a + 2, a + 1 + 2 * n))
  a = a + 1 + 2 * n
end
k = k + hashes
for i = 1, #KEYS - k do
  local key, op = KEYS[k + i], ARGV[a + 3 * i - 2]
  local value, member = ARGV[a + 3 * i - 1], ARGV[a + 3 * i]
  -- Most values have a field of their own: adding one is then a single call.
  local bare = op == '+' and string.sub(member, 1, 1) ~= '['
  if not (bare and redis.call('HSETNX', key, value, member) == 1) then
    local raw = redis.call('HGET', key, value)
    local kept = {}
    if raw then
      local others = {raw}
      if string.sub(raw, 1, 1) == '[' then others = cjson.decode(raw) end
      for _, other in ipairs(others) do
        if other ~= member then kept[#kept + 1] = other end
      end
    end
    if op == '+' then kept[#kept + 1] = member end
    if #kept == 0 then
      redis.call('HDEL', key, value)
    elseif #kept == 1 and string.sub(kept[1], 1, 1) ~= '[' then
      redis.call('HSET', key, value, kept[1])
    else
      redis.call('HSET', key, value, cjson.encode(kept))
    end
  end
end
return 'ok'
"""

# Up to ARGV[3] entries of the buckets KEYS (numbered from ARGV[1]) in (bucket, key) order,
# skipping keys up to ARGV[2] in the first bucket: a flat list of bucket, key, entity JSON.
_PAGE = """
local first, after, limit = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local out = {}
for i, bucket in ipairs(KEYS) do
  local entries = redis.call('HGETALL', bucket)
  local keys, values = {}, {}
  for j = 1, #entries, 2 do
    if i > 1 or entries[j] > after then
      keys[#keys + 1] = entries[j]
      values[entries[j]] = entries[j + 1]
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


def bucket_of(key: str | bytes) -> int:
    return zlib.crc32(key.encode() if isinstance(key, str) else key) % BUCKETS


def decoded(
    collections: Mapping[str, Collection[Any]], stored: Mapping[EntityRef, bytes]
) -> dict[EntityRef, Any]:
    """The `stored` entities' JSON as their collections' models, one decode call per collection."""
    by_collection: dict[str, dict[EntityRef, bytes]] = {}
    for ref, raw in stored.items():
        by_collection.setdefault(ref[0], {})[ref] = raw
    entities: dict[EntityRef, Any] = {}
    for name, raws in by_collection.items():
        entities.update(zip(raws, collections[name].loads_all(list(raws.values())), strict=True))
    return entities


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
        if collection.lookups:
            writes.relink(collection, ref, before.get(ref), state)
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

    def bucket_key(self, collection: str, bucket: int) -> str:
        return f"{self._versioned}e:{collection}:{bucket}"

    def entity_slot(self, collection: str, key: str) -> tuple[str, str]:
        """The hash an entity lives in, and its field there."""
        return self.bucket_key(collection, bucket_of(key)), key

    def lookup_slot(self, collection: str, lookup: str, value: str) -> tuple[str, str]:
        """The hash a lookup value lives in, and its field there (see the module's docstring)."""
        digest = zlib.crc32(value.encode())
        bucket, field = digest % BUCKETS, digest // BUCKETS
        return self.lookup_key(collection, lookup, bucket), str(field)

    def lookup_key(self, collection: str, lookup: str, bucket: int) -> str:
        return f"{self._versioned}lk:{collection}:{lookup}:{bucket}"

    def position_key(self, tp: TopicPartition) -> str:
        return self.versioned("pos", tp.topic, str(tp.partition))

    def at(self, version: int) -> "ReadModel":
        """Another version of the same read model, written by a rebuild: not live."""
        return ReadModel(self.redis, self.prefix, version=version, live=False)

    @property
    def bootstrap_key(self) -> str:
        """'pending' until this version's bootstrap is done; no projector commits before that."""
        return self.versioned("bootstrap")

    async def initialise(self) -> bool:
        """Point at version 1, marked as waiting for its bootstrap, if nothing does yet (both at
        once, so a second instance never sees one without the other); True when brand new."""
        created = bool(
            await self.redis.eval(_INITIALISE, 2, self.version_key, self.key("v1", "bootstrap"))
        )
        await self.refresh()
        return created

    async def bootstrapped(self) -> None:
        await self.redis.set(self.bootstrap_key, "done")

    async def refresh(self) -> bool:
        """Follow the version pointer; True when it moved. Raises ReadModelLostError when there is
        no pointer (call initialise() first)."""
        current = await self.redis.get(self.version_key)
        if current is None:
            raise ReadModelLostError(f"no read model version at {self.version_key}")
        version = int(current)
        moved, self.version = version != self.version, version
        return moved

    async def drop(self) -> int:
        """Delete every key of this version; returns how many. (A version has a few thousand
        keys, whatever its entities: they live in buckets.)"""
        keys = [key async for key in self.redis.scan_iter(match=self.versioned("*"), count=1000)]
        return await self._unlink(keys)

    async def drop_entities(self, collections: Mapping[str, Collection[Any]]) -> int:
        """Delete the entities and lookups of `collections` in this version (not its positions or
        markers). Their keys are known, so no SCAN walks the whole keyspace."""
        keys = []
        for name, collection in collections.items():
            keys += [self.bucket_key(name, bucket) for bucket in range(BUCKETS)]
            for lookup in collection.lookups:
                keys += [self.lookup_key(name, lookup, bucket) for bucket in range(BUCKETS)]
        return await self._unlink(keys)

    async def _unlink(self, keys: Sequence[str | bytes]) -> int:
        deleted = 0
        for start in range(0, len(keys), 1000):  # bounded commands
            deleted += await self.redis.unlink(*keys[start : start + 1000])
        return deleted

    async def get(self, collection: str, key: str) -> bytes | None:
        return cast(bytes | None, await self.redis.hget(*self.entity_slot(collection, key)))

    async def page(
        self, collection: str, *, after: str | None, limit: int
    ) -> tuple[list[bytes], str | None]:
        """Up to `limit` entities after the cursor `after`, and the cursor of the next page (None
        at the end). The order is stable: by bucket, then by key."""
        bucket, key = (0, "") if after is None else _cursor(after)
        found: list[tuple[int, bytes, bytes]] = []
        chunk = 256  # buckets per script call
        while len(found) <= limit and bucket < BUCKETS:
            last = min(bucket + chunk, BUCKETS)
            keys = [self.bucket_key(collection, b) for b in range(bucket, last)]
            left = limit + 1 - len(found)
            flat = cast(
                list[Any], await self.redis.eval(_PAGE, len(keys), *keys, bucket, key, left)
            )
            found += [(int(flat[i]), flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]
            bucket, key = last, ""
        more = len(found) > limit
        found = found[:limit]
        if not more or not found:
            return [value for _, _, value in found], None
        last_bucket, last_key, _ = found[-1]
        return [value for _, _, value in found], f"{last_bucket}:{last_key.decode()}"

    async def count(self, collection: str | None = None) -> int:
        """How many entities `collection` (or every collection) holds."""
        pattern = f"{self._versioned}e:{collection or '*'}:*"
        buckets = [key async for key in self.redis.scan_iter(match=pattern, count=1000)]
        return await self.fields_in(buckets)

    async def fields_in(self, hashes: Sequence[str | bytes]) -> int:
        """How many fields the `hashes` hold together (one round trip)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in hashes:
                pipe.hlen(key)
            return sum(await pipe.execute())

    async def lookup(self, collection: Collection[Any], lookup: str, value: str) -> list[bytes]:
        """Entities of `collection` whose `lookup` has `value`, in key order."""
        slot = self.lookup_slot(collection.name, lookup, value)
        raw = cast(bytes | None, await self.redis.hget(*slot))
        if raw is None:
            return []
        keys = orjson.loads(raw) if raw.startswith(b"[") else [raw.decode()]
        found = await self._read(
            [], [self.entity_slot(collection.name, key) for key in sorted(keys)]
        )
        value_of = collection.lookups[lookup]
        # Skipped: values that share the hash, and entities deleted between the two reads.
        return [
            entity for entity in found if entity and value_of(collection.loads(entity)) == value
        ]

    async def _read(
        self, keys: Sequence[str], slots: Sequence[tuple[str, str]]
    ) -> list[bytes | None]:
        """The values of string `keys`, then of the hash `slots`, in one round trip."""
        hashes, fields = [key for key, _ in slots], [field for _, field in slots]
        return cast(
            list[bytes | None],
            await self.redis.eval(
                _READ, len(keys) + len(slots), *keys, *hashes, len(keys), *fields
            ),
        )

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
        *,
        bootstrapping: bool = False,
    ) -> bool:
        """Fold a batch onto the current states and write the result with the new positions.

        Returns False, writing nothing, when a stored position is no longer the one `expected`
        (another consumer has moved the partition on) or this version is no longer the live one.
        While a snapshot export holds the freeze, it waits. A concurrent write to an entity this
        batch read makes it re-read and fold again. Unless `bootstrapping`, raises
        ReadModelLostError while the live version waits for its bootstrap.
        """
        tps = list(expected)
        guards = [self.version_key, self.freeze_key, self.bootstrap_key] if self.live else []
        strings = [*guards, *(self.position_key(tp) for tp in tps)]
        slots = [self.entity_slot(collection, key) for collection, key in entities]
        while True:
            values = await self._read(strings, slots)
            if self.live:
                version, frozen, bootstrap = values[:3]
                if frozen is not None:  # a snapshot export is reading: wait for it
                    await asyncio.sleep(0.1)
                    continue
                if bootstrap == b"pending" and not bootstrapping:
                    raise ReadModelLostError("the read model is being bootstrapped again")
                if version is None or int(version) != self.version:
                    return False  # a rebuild swapped versions, or Redis lost them: re-seek
            stored = values[len(guards) : len(strings)]
            if [None if v is None else int(v) for v in stored] != [expected[tp] for tp in tps]:
                return False
            current = values[len(strings) :]
            writes = await fold(current)
            done = await self._commit(expected, new, slots, current, writes, bootstrapping)
            if done is not None:
                return done
            # None: another consumer wrote an entity of the batch; read and fold again

    async def write(
        self,
        expected: Mapping[TopicPartition, int | None],
        new: Mapping[TopicPartition, int],
        writes: Writes,
        *,
        bootstrapping: bool = False,
    ) -> bool:
        """commit() for writes that depend on no stored entity (a bootstrap's): one round trip."""
        return bool(await self._commit(expected, new, [], [], writes, bootstrapping))

    async def _commit(
        self,
        expected: Mapping[TopicPartition, int | None],
        new: Mapping[TopicPartition, int],
        read: Sequence[tuple[str, str]],
        current: Sequence[bytes | None],
        writes: Writes,
        bootstrapping: bool,
    ) -> bool | None:
        """Run _COMMIT, waiting out a freeze: True when written; False when the positions or the
        version moved on; None when an entity `read` is no longer `current`."""
        # KEYS and ARGV in the order _COMMIT reads them, section by section (one pass each).
        keys = [self.version_key, self.freeze_key, self.bootstrap_key]
        keys += [self.position_key(tp) for tp in expected]
        keys += [self.position_key(tp) for tp in new]
        hashes: list[tuple[str, list[tuple[str, bytes]]]] = []
        for key, fields in writes.hashes.items():
            items = list(fields.items())
            for start in range(0, len(items), 1000):  # Lua's unpack() takes a few thousand
                hashes.append((key, items[start : start + 1000]))
        args: list[Any] = [len(expected), len(new), len(read), len(writes.states), len(hashes)]
        args.append(self.version if self.live else "")
        args.append("1" if self.live and not bootstrapping else "0")
        args += ["" if offset is None else offset for offset in expected.values()]
        args += new.values()
        for (key, name), json in zip(read, current, strict=True):
            keys.append(key)
            args += (name, json or b"")
        for (collection, name), state in writes.states.items():
            keys.append(self.bucket_key(collection, bucket_of(name)))
            args += (name, state or b"")
        for key, chunk in hashes:
            keys.append(key)
            args.append(len(chunk))
            args += chain.from_iterable(chunk)
        for op, links in (("-", writes.unlinked), ("+", writes.linked)):
            for (collection, member), lookup, value in links:
                key, entry = self.lookup_slot(collection, lookup, value)
                keys.append(key)
                args += (op, entry, member)
        while True:
            outcome = await self.redis.eval(_COMMIT, len(keys), *keys, *args)
            if outcome != b"frozen":
                break
            await asyncio.sleep(0.1)  # a snapshot export is reading (in Redis): wait for it
        if outcome == b"pending":
            raise ReadModelLostError("the read model is being bootstrapped again")
        return None if outcome == b"changed" else outcome == b"ok"


def _cursor(after: str) -> tuple[int, str]:
    bucket, colon, key = after.partition(":")
    if not bucket.isascii() or not bucket.isdigit() or not colon:
        raise InvalidCursorError(f"not a cursor this service handed out: {after!r}")
    number = int(bucket) if len(bucket) < 6 else BUCKETS
    return min(number, BUCKETS), key  # past the last bucket: the end


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

    __slots__ = ("_readmodel",)

    def __init__(self, readmodel: ReadModel) -> None:
        self._readmodel = readmodel

    async def get(self, collection: Collection[Any] | str, key: str) -> bytes | None:
        """The stored JSON of one entity, or None."""
        return await self._readmodel.get(_name(collection), key)

    async def page(
        self, collection: Collection[Any] | str, *, after: str | None, limit: int
    ) -> StoredPage:
        """Up to `limit` entities' JSON after the cursor `after`, and the next page's cursor (None
        at the end); a cursor must match CURSOR_PATTERN, else InvalidCursorError (a 422)."""
        items, next_cursor = await self._readmodel.page(_name(collection), after=after, limit=limit)
        return StoredPage(items, next_cursor)

    async def lookup(self, collection: Collection[Any], lookup: str, value: str) -> list[bytes]:
        """The JSON of the entities whose `lookup` has `value`, in key order."""
        return await self._readmodel.lookup(collection, lookup, value)

    async def count(self, collection: Collection[Any] | str | None = None) -> int:
        """How many entities `collection` (or every collection) holds."""
        return await self._readmodel.count(None if collection is None else _name(collection))


def _name(collection: Collection[Any] | str) -> str:
    return collection if isinstance(collection, str) else collection.name
