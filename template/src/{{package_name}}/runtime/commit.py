"""Batch commits: a batch's entities read, and its writes committed with the consumer positions.

A batch is committed by one script that checks, then writes: no snapshot export may hold the
freeze, the live version may not wait for its bootstrap, and the version pointer, the positions the
batch started from and the entities it read must be as they were, else it writes nothing. So a
consumer that lost its partitions in a rebalance (its positions moved on), or whose version was
swapped out by a rebuild, is told `moved`; one whose entity another consumer wrote meanwhile
(joins) is told `changed`, and folds again. The script is the one place these guards are checked:
anything checked before it could change before it runs. (WATCH would do the same, but Redis checks
WATCHed keys against each other: a batch's few hundred keys cost milliseconds.)
"""

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Literal, NamedTuple, cast

from aiokafka import TopicPartition
from redis.asyncio import Redis

from .keyspace import Keyspace, Slot, entity_json, join_entity, split_entity
from .projection import Collection
from .redis import hget_each
from .versions import ReadModelLostError

EntityRef = tuple[str, str]  # (collection, key)
Outcome = Literal["ok", "moved", "changed"]
Part = Literal["json", "history"]  # of an entity's field (keyspace.py)

FREEZE_POLL_S = 0.1


class Link(NamedTuple):  # a tuple: a batch makes one per lookup change
    """An entry of a secondary lookup: `ref` has `value` under `lookup`."""

    ref: EntityRef
    lookup: str
    value: str


@dataclass
class Writes:
    """The outcome of folding a batch: new entity states (None deletes) and histories, other
    fields written (parked events, notes; None deletes) and lookup changes; and, from a snapshot,
    hashes' fields written as they were exported, and entities' parts merged into their fields."""

    states: dict[EntityRef, bytes | None] = field(default_factory=dict)
    histories: dict[EntityRef, bytes] = field(default_factory=dict)
    slots: dict[Slot, bytes | None] = field(default_factory=dict)
    linked: list[Link] = field(default_factory=list)
    unlinked: list[Link] = field(default_factory=list)
    hashes: dict[str, dict[str, bytes]] = field(default_factory=dict)  # hash -> field -> value
    merged: list[tuple[EntityRef, Part, bytes]] = field(default_factory=list)

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


def states(
    collections: Mapping[str, Collection[Any]], stored: Mapping[EntityRef, bytes | None]
) -> dict[EntityRef, Any]:
    """The `stored` entities as their models, None where absent: what a fold starts from."""
    found = {ref: raw for ref, raw in stored.items() if raw is not None}
    return {**dict.fromkeys(stored), **decoded(collections, found)}


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


# Commits a batch if what it was folded from still holds. It reads KEYS and ARGV in order, through
# the cursors k and a, as _arguments() appends them: each section is led by its length in ARGV; the
# loops over entities move the cursors a whole entry at a time (a call per argument would cost a
# batch's few thousand arguments a tenth of a millisecond). Returns 'ok', or what stopped it,
# having written nothing: 'frozen', 'pending' (the live version waits for its bootstrap), 'moved'
# (positions or version) or 'changed' (an entity read).
_COMMIT = """
local k, a = 0, 0
local function key() k = k + 1 return KEYS[k] end
local function arg() a = a + 1 return ARGV[a] end
-- The guards: the version pointer, the freeze, the bootstrap marker; the version committed to
-- ('' when not live), and '1' when a pending bootstrap stops the commit.
local pointer, freeze, bootstrap = key(), key(), key()
local version = arg()
local strict = arg()
if version ~= '' then
  if redis.call('EXISTS', freeze) == 1 then return 'frozen' end
  if strict == '1' and redis.call('GET', bootstrap) == 'pending' then return 'pending' end
  if redis.call('GET', pointer) ~= version then return 'moved' end
end
-- Positions expected: key; offset, '' for none.
for _ = 1, tonumber(arg()) do
  if (redis.call('GET', key()) or '') ~= arg() then return 'moved' end
end
-- Fields read (entities, with their histories): hash; field, then the value or '' when absent (a
-- value is never empty).
for _ = 1, tonumber(arg()) do
  k, a = k + 1, a + 2
  if (redis.call('HGET', KEYS[k], ARGV[a - 1]) or '') ~= ARGV[a] then return 'changed' end
end
-- Positions written: key; offset.
for _ = 1, tonumber(arg()) do
  redis.call('SET', key(), arg())
end
-- Fields written (entities, with their histories, and parked events): hash; field, then the value
-- or '' to delete.
for _ = 1, tonumber(arg()) do
  k, a = k + 1, a + 2
  if ARGV[a] == '' then
    redis.call('HDEL', KEYS[k], ARGV[a - 1])
  else
    redis.call('HSET', KEYS[k], ARGV[a - 1], ARGV[a])
  end
end
-- Entity fields merged (a snapshot's, whose entities and histories may come apart): hash; field,
-- 'j' or 'h', then the entity's JSON or its history, the other part of the field kept.
for _ = 1, tonumber(arg()) do
  k, a = k + 1, a + 3
  local stored = redis.call('HGET', KEYS[k], ARGV[a - 2]) or '\\0'
  local cut = string.find(stored, '\\0', 1, true) or (#stored + 1)
  local json, history = string.sub(stored, 1, cut - 1), string.sub(stored, cut + 1)
  if ARGV[a - 1] == 'j' then json = ARGV[a] else history = ARGV[a] end
  if history ~= '' then json = json .. '\\0' .. history end
  redis.call('HSET', KEYS[k], ARGV[a - 2], json)
end
-- Hashes written as they are (a snapshot's): hash; how many fields, then field, value pairs,
-- taken in one HSET (the cursor moves past them).
for _ = 1, tonumber(arg()) do
  local hash, n = key(), tonumber(arg())
  redis.call('HSET', hash, unpack(ARGV, a + 1, a + 2 * n))
  a = a + 2 * n
end
-- Lookup changes, to the end: hash; '+' or '-', field, entity key. One entity key is stored as it
-- is, several (or one that starts with '[') as a JSON list.
while k < #KEYS do
  k, a = k + 1, a + 3
  local hash, op, value, member = KEYS[k], ARGV[a - 2], ARGV[a - 1], ARGV[a]
  -- Most values have a field of their own: adding one is then a single call.
  local bare = op == '+' and string.sub(member, 1, 1) ~= '['
  if not (bare and redis.call('HSETNX', hash, value, member) == 1) then
    local raw = redis.call('HGET', hash, value)
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
      redis.call('HDEL', hash, value)
    elseif #kept == 1 and string.sub(kept[1], 1, 1) ~= '[' then
      redis.call('HSET', hash, value, kept[1])
    else
      redis.call('HSET', hash, value, cjson.encode(kept))
    end
  end
end
return 'ok'
"""


async def stored_positions(
    redis: Redis, keys: Keyspace, tps: Sequence[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The next offset to apply from each partition, as `keys`' version stores it (None: none
    applied yet), read with `redis` (the projector's pool, or the queries')."""
    if not tps:
        return {}
    raw = cast(list[bytes | None], await redis.mget([keys.position(tp) for tp in tps]))
    return {tp: None if value is None else int(value) for tp, value in zip(tps, raw, strict=True)}


class Sent:
    """A commit written out, its answer not read yet."""

    def __init__(
        self, batches: "Batches", connection: Any, keys: list[str], args: list[Any]
    ) -> None:
        self._batches, self._connection, self._keys, self._args = batches, connection, keys, args

    async def outcome(self) -> Outcome:
        """The commit's outcome, as `Batches.commit()` gives it. The connection goes back to its
        pool, closed first if the answer could not be read (what is left on it is unknown)."""
        pool = self._batches.redis.connection_pool
        try:
            answer = await self._connection.read_response()
        except BaseException:
            await self._connection.disconnect()
            raise
        finally:
            await pool.release(self._connection)
        return await self._batches._outcome(answer, self._keys, self._args)


class Batches:
    """Batch commits to the read model whose keys are `keys`. A `live` one commits to the version
    the pointer names (and waits out a snapshot export's freeze); one that is not writes a version
    a rebuild builds."""

    def __init__(self, redis: Redis, keys: Keyspace, *, live: bool = True) -> None:
        self.redis = redis
        self.keys = keys
        self.live = live

    async def read(self, refs: Sequence[EntityRef]) -> dict[EntityRef, bytes | None]:
        """The stored JSON of each entity (None: absent), in one round trip."""
        if not refs:
            return {}
        found = await hget_each(self.redis, [self.keys.entity(*ref) for ref in refs])
        return {ref: entity_json(stored) for ref, stored in zip(refs, found, strict=True)}

    async def read_with_histories(
        self, refs: Sequence[EntityRef]
    ) -> tuple[dict[EntityRef, bytes | None], dict[EntityRef, bytes | None]]:
        """Each entity's stored JSON and its history (fold.py), None where absent, in one round
        trip: what a fold reads, and what its commit guards."""
        keys = self.keys
        slots = [keys.entity(*ref) for ref in refs]
        if keys.inline_histories:
            parts = [split_entity(stored) for stored in await hget_each(self.redis, slots)]
        else:
            found = await hget_each(self.redis, slots + [keys.history(*ref) for ref in refs])
            parts = list(zip(found[: len(refs)], found[len(refs) :], strict=True))
        entities = {ref: json for ref, (json, _) in zip(refs, parts, strict=True)}
        return entities, {ref: history for ref, (_, history) in zip(refs, parts, strict=True)}

    async def read_slots(self, slots: Sequence[Slot]) -> dict[Slot, bytes | None]:
        """The value of each hash field (None: absent), in one round trip."""
        if not slots:
            return {}
        return dict(zip(slots, await hget_each(self.redis, list(slots)), strict=True))

    async def positions(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The next offset to apply from each partition (None: none applied yet)."""
        return await stored_positions(self.redis, self.keys, tps)

    async def commit(
        self,
        expected: Mapping[TopicPartition, int | None],
        new: Mapping[TopicPartition, int],
        read: Mapping[EntityRef, bytes | None],
        writes: Writes,
        *,
        histories: Mapping[EntityRef, bytes | None] | None = None,
        bootstrapping: bool = False,
    ) -> Outcome:
        """Write `writes` and the `new` positions if the stored positions are still `expected`
        and the entities still as `read`, with their `histories` as read: 'ok'. Else nothing is
        written: 'moved' when a position or the live version moved on (re-seek), 'changed' when
        an entity or history read did (read and fold again). While a snapshot export holds the
        freeze, it waits. Unless `bootstrapping`, raises ReadModelLostError while the live
        version waits for its bootstrap."""
        keys, args = self._arguments(expected, new, read, histories or {}, writes, bootstrapping)
        answer = await self.redis.eval(_COMMIT, len(keys), *keys, *args)
        return await self._outcome(answer, keys, args)

    async def send(
        self,
        expected: Mapping[TopicPartition, int | None],
        new: Mapping[TopicPartition, int],
        read: Mapping[EntityRef, bytes | None],
        writes: Writes,
        *,
        histories: Mapping[EntityRef, bytes | None] | None = None,
    ) -> "Sent":
        """commit(), written out on a connection of its own; `Sent.outcome()` reads its answer.
        What the caller does meanwhile overlaps the script running in Redis."""
        keys, args = self._arguments(expected, new, read, histories or {}, writes, False)
        pool = self.redis.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_command("EVAL", _COMMIT, len(keys), *keys, *args)
        except BaseException:
            await connection.disconnect()
            await pool.release(connection)
            raise
        return Sent(self, connection, keys, args)

    async def _outcome(self, answer: bytes, keys: list[str], args: list[Any]) -> Outcome:
        while answer == b"frozen":  # a snapshot export is reading (in Redis): try again
            await asyncio.sleep(FREEZE_POLL_S)
            answer = await self.redis.eval(_COMMIT, len(keys), *keys, *args)
        if answer == b"pending":
            raise ReadModelLostError("the read model is being bootstrapped again")
        return cast(Outcome, answer.decode())

    async def write(
        self,
        expected: Mapping[TopicPartition, int | None],
        new: Mapping[TopicPartition, int],
        writes: Writes,
        *,
        bootstrapping: bool = False,
    ) -> bool:
        """commit() for writes that depend on no stored entity (a bootstrap's): True when
        written, False when the positions moved on."""
        outcome = await self.commit(expected, new, {}, writes, bootstrapping=bootstrapping)
        return outcome == "ok"

    def _arguments(
        self,
        expected: Mapping[TopicPartition, int | None],
        new: Mapping[TopicPartition, int],
        read: Mapping[EntityRef, bytes | None],
        histories: Mapping[EntityRef, bytes | None],
        writes: Writes,
        bootstrapping: bool,
    ) -> tuple[list[str], list[Any]]:
        """_COMMIT's KEYS and ARGV, appended in the order it reads them."""
        keys = self.keys
        names = [keys.pointer, keys.freeze, keys.bootstrap]
        args: list[Any] = [keys.version if self.live else ""]
        args.append("1" if self.live and not bootstrapping else "0")
        args.append(len(expected))
        for tp, offset in expected.items():
            names.append(keys.position(tp))
            args.append("" if offset is None else offset)
        # The fields read and written: with inline histories an entity and its history are one.
        inline = keys.inline_histories
        slots = {ref: keys.entity(*ref) for ref in read}  # made once: most are written too
        guards: list[tuple[Slot, bytes | None]] = []
        fields: list[tuple[Slot, bytes | None]] = []
        if inline:
            guards += [
                (slots[ref], join_entity(json, histories.get(ref))) for ref, json in read.items()
            ]
            states, written = writes.states, writes.histories
            for ref in states.keys() | written.keys():
                json = states[ref] if ref in states else read[ref]
                history = written[ref] if ref in written else histories.get(ref)
                fields.append((slots.get(ref) or keys.entity(*ref), join_entity(json, history)))
        else:
            guards += [(slots[ref], json) for ref, json in read.items()]
            guards += [(keys.history(*ref), history) for ref, history in histories.items()]
            fields += [(slots.get(ref) or keys.entity(*ref), s) for ref, s in writes.states.items()]
            fields += [(keys.history(*ref), raw) for ref, raw in writes.histories.items()]
        args.append(len(guards))
        for (hash_, name), raw in guards:
            names.append(hash_)
            args += (name, raw or b"")
        args.append(len(new))
        for tp, offset in new.items():
            names.append(keys.position(tp))
            args.append(offset)
        fields += writes.slots.items()
        args.append(len(fields))
        for (hash_, name), raw in fields:
            names.append(hash_)
            args += (name, raw or b"")
        args.append(len(writes.merged))
        for ref, part, raw in writes.merged:
            hash_, name = keys.entity(*ref)
            names.append(hash_)
            args += (name, "j" if part == "json" else "h", raw)
        chunks = [
            (hash_, items[start : start + 1000])  # Lua's unpack() takes a few thousand
            for hash_, fields_of in writes.hashes.items()
            for items in [list(fields_of.items())]
            for start in range(0, len(items), 1000)
        ]
        args.append(len(chunks))
        for hash_, chunk in chunks:
            names.append(hash_)
            args.append(len(chunk))
            args += chain.from_iterable(chunk)
        for op, links in (("-", writes.unlinked), ("+", writes.linked)):
            for (collection, member), lookup, value in links:
                hash_, entry = keys.lookup(collection, lookup, value)
                names.append(hash_)
                args += (op, entry, member)
        return names, args
