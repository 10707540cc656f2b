"""Folding a batch onto its entities, one entity's events at a time, in order and at most once.

Each entity keeps a history beside it (`History`): digests of the last events applied to it
(CloudEvent `source` + `id`), the highest ordering value it has seen where its contracts declare
one, the partition each topic's events of it came from, and how many of its events are parked.
An event meets these rules, in this order, for each entity it changes:

1. The entity is parked: the event joins the end of its parked sequence, unless the sequence
   waits for the entity to exist and this event creates it: then it is applied, and the parked
   events after it, in order (each meets these rules again).
2. Its digest is in the entity's window: a duplicate, skipped and counted.
3. Its ordering value is below the highest the entity has seen: stale, skipped and counted.
4. The entity does not exist and the projection declares what that means (`project(missing=)`):
   parked, skipped on purpose (counted) or dead-lettered.
5. Applied. If it raises on every attempt, it is parked instead, and every later event of the
   entity with it, until an operator releases them (`dlq release`) or skips the first
   (`dlq skip`).

A parked event is stored whole (its record), so it can be replayed exactly and shown. A sequence
has at most PARK_MAX_EVENTS events; past that, the entity's events are dead-lettered, with the
reason. Events of one topic reaching one entity from two partitions are counted and logged: a
partition orders them, two do not.
"""

import base64
import hashlib
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from .commit import Batches, EntityRef, Writes, writes_for
from .events import InvalidEventError
from .kafka.records import Record
from .keyspace import Keyspace, Slot
from .projection import Change, Collection, Event

Outcome = Literal["applied", "duplicate", "stale", "missing", "parked", "dead_lettered"]
Why = Literal["missing", "failed"]  # what a parked sequence waits for: its entity, or an operator


class MissingEntityError(InvalidEventError):
    """The event's entity does not exist, and its projection says to dead-letter it then."""


class ParkedSequenceFullError(InvalidEventError):
    """The entity's parked sequence is at its bound: its later events are dead-lettered."""


def digest(event: Event[Any]) -> bytes:
    """What identifies an event in an entity's window: its source and id, hashed to 6 bytes
    (48 bits: two of an entity's last few events alike by chance, about never)."""
    return hashlib.blake2b(f"{event.source}\0{event.id}".encode(), digest_size=6).digest()


DIGEST_SIZE = 6
_ORDERED, _PARKED = 1, 2  # flags of a stored history
_WHY: tuple[Why, ...] = ("missing", "failed")


@dataclass(slots=True)
class History:
    """What the fold remembers of one entity, stored beside it in a few bytes (a history is kept
    per entity ever seen: `dumps` documents the format)."""

    ids: list[bytes] = field(
        default_factory=list
    )  # digests of the last events applied, oldest first
    order: int | None = None  # the highest ordering value applied
    writers: dict[int, int] = field(default_factory=dict)  # crc32(topic) -> partition
    parked: int = 0  # events waiting in its parked sequence
    why: Why | None = None
    since: float | None = None  # when the sequence began (epoch seconds)
    error: str | None = None  # why its first event waits

    @classmethod
    def loads(cls, raw: bytes | None) -> "History":
        if not raw:
            return cls()
        flags, count = raw[0], raw[1]
        at = 2 + count * DIGEST_SIZE
        ids = [raw[n : n + DIGEST_SIZE] for n in range(2, at, DIGEST_SIZE)]
        writers = {}
        for _ in range(raw[at]):
            topic, partition = _WRITER.unpack_from(raw, at + 1)
            writers[topic] = partition
            at += _WRITER.size
        at += 1
        history = cls(ids, writers=writers)
        if flags & _ORDERED:
            (history.order,) = _ORDER.unpack_from(raw, at)
            at += _ORDER.size
        if flags & _PARKED:
            history.parked, history.since, why = _PARKING.unpack_from(raw, at)
            history.why = _WHY[why]
            history.error = raw[at + _PARKING.size :].decode() or None
        return history

    def dumps(self) -> bytes:
        """flags (1: ordered, 2: parked), the digest count and digests, the writer count and per
        writer its topic's crc32 and its partition (u32 each), then the order (i64) if ordered,
        then, if parked, the count (u32), since (f64), why (u8) and the error (UTF-8, to the end).
        Never empty (commit.py reads an empty value as an absent one)."""
        flags = (_ORDERED if self.order is not None else 0) | (_PARKED if self.parked else 0)
        parts = [bytes((flags, len(self.ids))), *self.ids, bytes((len(self.writers),))]
        parts += [_WRITER.pack(topic, partition) for topic, partition in self.writers.items()]
        if self.order is not None:
            parts.append(_ORDER.pack(self.order))
        if self.parked:
            why = _WHY.index(self.why or "failed")
            parts.append(_PARKING.pack(self.parked, self.since or 0.0, why))
            parts.append((self.error or "").encode())
        return b"".join(parts)


_WRITER = struct.Struct("<II")  # a topic's crc32, a partition
_ORDER = struct.Struct("<q")
_PARKING = struct.Struct("<IdB")  # count, since, why


@dataclass(slots=True)
class Parked:
    """An event waiting in an entity's parked sequence: its record, and the change it makes
    there (None until the record is read again)."""

    record: Record
    change: Change | None = None

    def dumps(self) -> bytes:
        record = self.record
        return orjson.dumps(
            {
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "key": _b64(record.key),
                "value": _b64(record.value),
                "headers": [[name, _b64(value)] for name, value in record.headers],
            }
        )

    @classmethod
    def loads(cls, raw: bytes) -> "Parked":
        doc = orjson.loads(raw)
        return cls(
            StoredRecord(
                doc["topic"],
                doc["partition"],
                doc["offset"],
                _unb64(doc["key"]),
                _unb64(doc["value"]),
                [(name, _unb64(value)) for name, value in doc["headers"]],
            )
        )


@dataclass(slots=True)
class StoredRecord:
    """A parked record as stored: a Record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


def _unb64(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)


Work = list[tuple[Record, list[Change]]]  # a batch's records, each with the changes it makes
Conflict = tuple[EntityRef, Record, int]  # an entity, a record, the other partition it came from
Reread = Callable[[Parked, EntityRef], Change]  # a stored parked event's change to its entity


class Fold:
    """One fold of a batch onto the states, histories and parked sequences it read.

    It owns the `histories` it is given (it changes them): a fold again needs them read again.
    `give_up` names the events (by index in the work) that raised on every attempt: this fold
    parks them instead of applying them. What the fold leaves: `states`, `histories`, the parked
    sequences (`queues`, with `rewritten` those to store anew, else appended to), `failed` (the
    events that raised, not given up yet), `letters` and `outcomes`.
    """

    def __init__(
        self,
        states: Mapping[EntityRef, Any],
        histories: Mapping[EntityRef, History],
        queues: Mapping[EntityRef, list[Parked]],
        *,
        window: int,
        park_max: int,
        give_up: Mapping[int, Exception] | None = None,
        reread: Reread | None = None,
        now: float | None = None,
    ) -> None:
        self.states = dict(states)
        self.histories = dict(histories)
        self.queues = {ref: list(queue) for ref, queue in queues.items()}
        self.stored = {ref: len(queue) for ref, queue in queues.items()}  # as read
        self.rewritten: set[EntityRef] = set()  # sequences released (wholly or in part)
        self.failed: dict[int, Exception] = {}
        self.letters: list[tuple[Record, Exception]] = []
        self.outcomes: Counter[tuple[str, str, Outcome]] = Counter()
        self.conflicts: list[Conflict] = []
        self.newly_parked: list[tuple[EntityRef, Record, str]] = []  # what began a sequence, why
        # Events not applied (dead-lettered, parked), with why, and parked ones now applied: what
        # consistency tokens learn (keyspace.unapplied).
        self.unapplied: list[tuple[Record, str]] = []
        self.reapplied: list[Record] = []
        self._window = window
        self._park_max = park_max
        self._give_up = give_up or {}
        self._reread = reread
        self._now = time.time() if now is None else now
        self._topics: dict[str, int] = {}  # topic -> its crc32, as histories name it

    def run(self, work: Work) -> "Fold":
        for index, (record, changes) in enumerate(work):
            for change in changes:
                self._event(index, record, change)
        return self

    def release(self, ref: EntityRef, *, skip_head: bool = False) -> list[Parked]:
        """Replay `ref`'s parked sequence in order (an operator's release), without its first
        event when `skip_head`; returns what was skipped."""
        queue = self._unpark(ref)
        skipped, queue = (queue[:1], queue[1:]) if skip_head else ([], queue)
        for parked in queue:
            self._replay(ref, parked)
        return skipped

    # ------------------------------------------------------------------ the rules
    def _event(self, index: int, record: Record, change: Change) -> None:
        ref = (change.collection.name, change.key)
        history = self.histories.get(ref)
        if history is None:  # not setdefault(), which would build a History for every event
            history = self.histories[ref] = History()
        if history.parked:
            creates = history.why == "missing" and change.missing == "apply"
            if not (creates and self.states.get(ref) is None):
                self._park(ref, Parked(record, change), history.why or "failed", None)
                return
            waiting = self._unpark(ref)
            self._step(ref, index, record, change)
            for parked in waiting:
                self._replay(ref, parked)
            return
        self._step(ref, index, record, change)

    def _step(self, ref: EntityRef, index: int | None, record: Record, change: Change) -> None:
        history = self.histories[ref]
        if history.parked:  # parked again while a sequence was replayed
            self._park(ref, Parked(record, change), history.why or "failed", None)
            return
        event = change.event
        tag = digest(event)
        if tag in history.ids:
            self._count(record, event, "duplicate")
            return
        if change.order is not None and history.order is not None and change.order < history.order:
            self._count(record, event, "stale")
            return
        state = self.states.get(ref)
        if state is None and change.missing != "apply":
            if change.missing == "park":
                self._park(ref, Parked(record, change), "missing", "its entity does not exist")
            elif change.missing == "ignore":
                self._count(record, event, "missing")
            else:
                self._letter(record, MissingEntityError(f"{ref[0]}/{ref[1]} does not exist"))
            return
        if index is not None and index in self._give_up:
            error = self._give_up[index]
            self._park(ref, Parked(record, change), "failed", f"{type(error).__name__}: {error}")
            return
        try:
            new = change.apply(state, event)
        except Exception as exc:
            if index is None:  # a replayed event raises: it parks again
                self._park(ref, Parked(record, change), "failed", f"{type(exc).__name__}: {exc}")
            else:
                self.failed[index] = exc
            return
        self.states[ref] = new
        history.ids = [*history.ids, tag][-self._window :] if self._window else []
        if change.order is not None:
            history.order = (
                change.order if history.order is None else max(history.order, change.order)
            )
        self._note_writer(ref, history, record)
        self._count(record, event, "applied")
        if index is None:  # a parked event, replayed
            self.reapplied.append(record)

    def _replay(self, ref: EntityRef, parked: Parked) -> None:
        if parked.change is None:
            if self._reread is None:
                raise RuntimeError("a stored parked event needs `reread` to be replayed")
            try:
                parked.change = self._reread(parked, ref)
            except InvalidEventError as exc:  # its contract changed since it was parked
                self._letter(parked.record, exc)
                return
        self._step(ref, None, parked.record, parked.change)

    def _park(self, ref: EntityRef, parked: Parked, why: Why, error: str | None) -> None:
        history = self.histories[ref]
        record = parked.record
        if history.parked >= self._park_max:
            self._letter(
                record,
                ParkedSequenceFullError(
                    f"{ref[0]}/{ref[1]} has {history.parked} parked events, the most it keeps"
                    " (PARK_MAX_EVENTS)"
                ),
            )
            return
        if not history.parked:
            history.why, history.since, history.error = why, self._now, error
            self.newly_parked.append((ref, record, error or f"behind a parked event ({why})"))
        history.parked += 1
        self.queues.setdefault(ref, []).append(parked)
        self.unapplied.append((record, f"parked: {error or f'behind a parked event ({why})'}"))
        if parked.change is not None:
            self._count(record, parked.change.event, "parked")

    def _unpark(self, ref: EntityRef) -> list[Parked]:
        history = self.histories[ref]
        queue = self.queues.pop(ref, [])
        history.parked, history.why, history.since, history.error = 0, None, None, None
        self.rewritten.add(ref)
        return queue

    def _note_writer(self, ref: EntityRef, history: History, record: Record) -> None:
        topic = self._topics.get(record.topic)
        if topic is None:
            topic = self._topics[record.topic] = zlib.crc32(record.topic.encode())
        before = history.writers.get(topic)
        if before is not None and before != record.partition:
            self.conflicts.append((ref, record, before))
        history.writers[topic] = record.partition

    def _letter(self, record: Record, error: Exception) -> None:
        self.letters.append((record, error))
        self.unapplied.append((record, dead_lettered(error)))

    def _count(self, record: Record, event: Event[Any], outcome: Outcome) -> None:
        self.outcomes[record.topic, event.type, outcome] += 1


def stored_writes(
    fold: Fold,
    keys: Keyspace,
    collections: Mapping[str, Collection[Any]],
    before: Mapping[EntityRef, Any],
    histories: Mapping[EntityRef, bytes | None],
) -> Writes:
    """What the fold changed, as writes: entities and lookups, histories that changed (from what
    `histories` held), the parked sequences' events and the index of parked entities."""
    writes = writes_for(collections, before, fold.states)
    slots, written = writes.slots, writes.histories
    parks = bool(fold.queues or fold.rewritten)  # else no entity has a parked sequence
    for ref, history in fold.histories.items():
        raw = history.dumps()
        if raw != (histories.get(ref) or _EMPTY):
            written[ref] = raw
        if parks:
            _store_parked(fold, keys, ref, history, slots)
    # A parked event replayed and applied in this very fold is applied: its note goes.
    reapplied = {(record.topic, record.partition, record.offset) for record in fold.reapplied}
    for topic, partition, offset in reapplied:
        writes.slots[keys.unapplied(topic, partition, offset)] = None
    note_unapplied(
        writes,
        keys,
        [
            (r, why)
            for r, why in fold.unapplied
            if (r.topic, r.partition, r.offset) not in reapplied
        ],
    )
    return writes


def _store_parked(
    fold: Fold, keys: Keyspace, ref: EntityRef, history: History, slots: dict[Slot, bytes | None]
) -> None:
    """The writes of `ref`'s parked sequence and of its entry in the index of parked entities."""
    queue = fold.queues.get(ref, [])
    stored = fold.stored.get(ref, 0)
    rewritten = ref in fold.rewritten
    for index in range(len(queue), stored if rewritten else 0):
        slots[keys.parked_event(*ref, index)] = None
    for index in range(0 if rewritten else stored, len(queue)):
        slots[keys.parked_event(*ref, index)] = queue[index].dumps()
    if history.parked:
        summary = {"count": history.parked, "since": history.since, "why": history.why}
        slots[keys.parked_entity(*ref)] = orjson.dumps({**summary, "error": history.error})
    elif stored or rewritten:
        slots[keys.parked_entity(*ref)] = None


def dead_lettered(error: BaseException) -> str:
    """Why an event dead-lettered was not applied, as its note says."""
    return f"dead-lettered: {type(error).__name__}: {error}"


def note_unapplied(writes: Writes, keys: Keyspace, records: Iterable[tuple[Record, str]]) -> None:
    """Note, with the batch's writes, the events it did not apply and why (keyspace.unapplied)."""
    for record, why in records:
        noted = f"{record.offset} {why}"[:300].encode(errors="replace")
        writes.slots[keys.unapplied(record.topic, record.partition, record.offset)] = noted


_EMPTY = History().dumps()


async def parked_sequences(
    batches: Batches, histories: Mapping[EntityRef, History]
) -> dict[EntityRef, list[Parked]]:
    """The stored parked sequences of the entities whose `histories` say they have one."""
    keys = batches.keys
    slots = {
        ref: [keys.parked_event(*ref, index) for index in range(history.parked)]
        for ref, history in histories.items()
        if history.parked
    }
    found = await batches.read_slots([slot for wanted in slots.values() for slot in wanted])
    return {
        ref: [Parked.loads(raw) for slot in wanted if (raw := found[slot]) is not None]
        for ref, wanted in slots.items()
    }
