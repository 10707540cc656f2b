"""Every Redis key this service uses: formatted and parsed here, and nowhere else.

All keys share the hash tag `{<prefix>}`, so one script may touch any of them, also on Redis
Cluster, where they all live in one slot. LAYOUT lists them (docs/design.md shows the same table).

Entities live in buckets, hashes of a collection (bucket = crc32(key) % the version's bucket
count), not a key each: a small hash is stored as one compact listpack, where a key per entity
costs ~100 bytes of overhead on top of its JSON. For the compact encoding, Redis'
`hash-max-listpack-value` must exceed the largest entity JSON and `hash-max-listpack-entries` the
entities per bucket (scripts/redis.sh and compose.yaml set 1024 and 512; without them it is still
correct, only larger). A version starts with FIRST_BUCKETS buckets, records its count, and is
copied into one with more as its collections grow (growth.py).

Lookups are stored by a hash of the value, not the value: crc32 picks the bucket and the rest of it
is the field, a small integer that a listpack stores in 5 bytes (`lookup_digest` undoes it). The
entity key is stored as it is, or a JSON list of keys when several share the field (commit.py writes
them).

Each entity's history (fold.py) shares its field: the value is the entity's JSON, a NUL byte, then
the history (JSON never holds a raw NUL byte), or the JSON alone while it has none. An entity that
does not exist but has a history (deleted, or awaited by parked events) is stored as the NUL byte
and its history: readers of entities skip those (`entity_json`). Layouts before 3 kept histories in
hashes of their own.

This layout is stored data: changing a key, or what a value holds, needs a new read-model version
(a rebuild) or a migration, and an upgrade test.
"""

import zlib
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition

# The layout this code writes. A live version written in a layout before IN_PLACE is served, and
# written, in its own layout while a rebuild at start writes the next version in this one
# (service.py). Layout 4 records the bucket count, which grows (absent: FIRST_BUCKETS): a version
# of layout 3 is one of layout 4 with 1024 buckets, read and written as it is.
LAYOUT = 4
INLINE_HISTORIES = 3  # the first layout that stores each history in its entity's field
IN_PLACE = 3  # the oldest layout this release writes without rebuilding it first

# Of a new version, and of every version of a layout before 4 (which records none); growth.py
# multiplies them once its collections reach 64 entities per bucket (65,536 entities).
FIRST_BUCKETS = 1024
MAX_BUCKETS = 1 << 20  # what page cursors allow for

# Per partition, the events not applied that are remembered by offset: a consistency token asked
# about one of them soon after (the usual case) finds it unless 1024 later offsets were not applied
# either and one took its slot.
UNAPPLIED_RING = 1024

Slot = tuple[str, str]  # a hash and a field of it


def bucket_of(key: str | bytes, buckets: int) -> int:
    return zlib.crc32(key.encode() if isinstance(key, str) else key) % buckets


def lookup_digest(bucket: int, field: str | bytes, buckets: int) -> int:
    """The hash of the value a lookup entry stores at `bucket`, `field` among `buckets`."""
    return int(field) * buckets + bucket


def split_entity(stored: bytes | None) -> tuple[bytes | None, bytes | None]:
    """An entity field's value as (the entity's JSON, its history), None for what it lacks. A
    value of a layout before 3 is JSON alone."""
    if not stored:
        return None, None
    json, _, history = stored.partition(b"\0")
    return json or None, history or None


def join_entity(json: bytes | None, history: bytes | None) -> bytes | None:
    """The entity field's value that holds `json` and `history` (None: the field is deleted): the
    JSON alone when there is no history, so that every value reads back as it was written."""
    if history is None:
        return json
    return (json or b"") + b"\0" + history


def entity_json(stored: bytes | None) -> bytes | None:
    """The entity's JSON in an entity field's value, None when it does not exist."""
    if stored is None:
        return None
    end = stored.find(0)
    return (stored if end < 0 else stored[:end]) or None


class Keyspace:
    """The keys of one service (`prefix`), those of the read model at `version`, which has
    `bucket_count` buckets per collection. The version moves when the read model this keyspace
    serves follows a swap (versions.py)."""

    def __init__(
        self, prefix: str, version: int = 1, layout: int = LAYOUT, buckets: int = FIRST_BUCKETS
    ) -> None:
        self.prefix = prefix
        self.in_layout = layout  # the version's, as is the count: Versions.refresh() keeps them
        self.bucket_count = buckets
        self._tag = tag = "{" + prefix + "}:"
        self.version = version
        self.pointer = tag + "version"  # the live version's number, which a rebuild swaps
        self.freeze = tag + "freeze"
        self.rebuilding = tag + "rebuilding"
        self.rebuild_progress = tag + "rebuild"
        self.commands_done = tag + "commands:done"
        self.gaps_accepted = tag + "gaps:accepted"

    @property
    def version(self) -> int:
        return self._version

    @version.setter
    def version(self, version: int) -> None:
        self._version = version
        self._versioned = versioned = f"{self._tag}v{version}:"  # built once: keys are per entity
        self.bootstrap = versioned + "bootstrap"
        self.layout = versioned + "layout"  # the layout the version was written in: LAYOUT
        self.bucket_count_key = versioned + "buckets"  # its bucket count (absent: FIRST_BUCKETS)
        self.parked = versioned + "parked"
        self.everything = versioned + "*"  # a SCAN pattern: every key of this version
        self.positions = versioned + "pos:*"

    def fixed(self) -> "Keyspace":
        """These keys as they are now, which do not follow the live version as it moves."""
        return Keyspace(self.prefix, self.version, self.in_layout, self.bucket_count)

    def at(self, version: int, buckets: int = FIRST_BUCKETS) -> "Keyspace":
        """The keys of another version, one written in this release's layout (a new one)."""
        return Keyspace(self.prefix, version, buckets=buckets)

    @property
    def inline_histories(self) -> bool:
        """Whether this version stores each history in its entity's field (layout 3 on)."""
        return self.in_layout >= INLINE_HISTORIES

    # ---------------------------------------------------------------- outside any version
    def command(self, command_id: str) -> str:
        return f"{self._tag}cmd:{command_id}"

    def handled(self, command_id: str) -> str:
        return f"{self._tag}handled:{command_id}"

    def rate(self, principal_digest: str, minute: int) -> str:
        """A principal's count of commands in one minute (a digest: a subject may be long)."""
        return f"{self._tag}rate:{principal_digest}:{minute}"

    # ---------------------------------------------------------------- this version
    def position(self, tp: TopicPartition) -> str:
        return f"{self._versioned}pos:{tp.topic}:{tp.partition}"

    def bucket(self, collection: str, bucket: int) -> str:
        return f"{self._versioned}e:{collection}:{bucket}"

    def entity(self, collection: str, key: str) -> Slot:
        """The hash an entity lives in, and its field there. (Inlined: a batch asks for a slot per
        entity it reads and writes.)"""
        bucket = zlib.crc32(key.encode()) % self.bucket_count
        return f"{self._versioned}e:{collection}:{bucket}", key

    def history(self, collection: str, key: str) -> Slot:
        """The hash an entity's history lives in (fold.py), and its field there, in layouts
        before 3 (after: its entity's field)."""
        bucket = zlib.crc32(key.encode()) % self.bucket_count
        return f"{self._versioned}h:{collection}:{bucket}", key

    def history_bucket(self, collection: str, bucket: int) -> str:
        return f"{self._versioned}h:{collection}:{bucket}"

    def parse_history_bucket(self, key: str | bytes) -> str | None:
        """The collection of a history hash of this version (layouts before 3), else None."""
        return self._collection_of(key, "h:")

    def parked_bucket(self, collection: str, bucket: int) -> str:
        return f"{self._versioned}pk:{collection}:{bucket}"

    def parked_event(self, collection: str, key: str, index: int) -> Slot:
        """Where the `index`th event of an entity's parked sequence is stored."""
        bucket = zlib.crc32(key.encode()) % self.bucket_count
        return f"{self._versioned}pk:{collection}:{bucket}", f"{index}:{key}"

    def parked_entity(self, collection: str, key: str) -> Slot:
        """The field of the index of parked entities that names this one."""
        return self.parked, f"{collection}:{key}"

    def parse_parked_entity(self, name: str | bytes) -> tuple[str, str]:
        """(collection, key) of a field of the index of parked entities."""
        collection, _, key = (name.decode() if isinstance(name, bytes) else name).partition(":")
        return collection, key

    def unapplied(self, topic: str, partition: int, offset: int) -> Slot:
        """Where an event that was not applied (dead-lettered, parked) is noted, for a consistency
        token to learn of it: a ring of UNAPPLIED_RING slots per partition, by offset."""
        return f"{self._versioned}ua:{topic}:{partition}", str(offset % UNAPPLIED_RING)

    def lookup_bucket(self, collection: str, lookup: str, bucket: int) -> str:
        return f"{self._versioned}lk:{collection}:{lookup}:{bucket}"

    def lookup(self, collection: str, lookup: str, value: str) -> Slot:
        """The hash a lookup value lives in, and its field there."""
        return self.lookup_at(collection, lookup, zlib.crc32(value.encode()))

    def lookup_at(self, collection: str, lookup: str, digest: int) -> Slot:
        """The hash and field of the lookup entry of values whose hash is `digest`."""
        count = self.bucket_count
        return self.lookup_bucket(collection, lookup, digest % count), str(digest // count)

    def mover(self, old: "Keyspace", family: str) -> Callable[[int, bytes], tuple[str, bytes]]:
        """What gives, for a field of bucket n of `family` in version `old` (`e:<collection>`,
        `pk:<collection>` or `lk:<collection>:<lookup>`: an entity, a parked event or a lookup
        entry), its hash and field in this version (growth.py)."""
        count, kind, _, rest = self.bucket_count, *family.partition(":")
        if kind == "lk":
            collection, lookup = rest.split(":", 1)
            lookups = [self.lookup_bucket(collection, lookup, b) for b in range(count)]

            def lookup_entry(bucket: int, field: bytes) -> tuple[str, bytes]:
                digest = lookup_digest(bucket, field, old.bucket_count)
                return lookups[digest % count], b"%d" % (digest // count)

            return lookup_entry
        if kind == "pk":  # a field is `<n>:<entity key>`
            parked = [self.parked_bucket(rest, b) for b in range(count)]
            return lambda _, field: (parked[zlib.crc32(field.split(b":", 1)[1]) % count], field)
        entities = [self.bucket(rest, b) for b in range(count)]
        return lambda _, field: (entities[zlib.crc32(field) % count], field)

    # ---------------------------------------------------------------- patterns, and parsing
    def buckets(self, collection: str = "*") -> str:
        """A SCAN pattern: the entity buckets of `collection` (default: of every collection)."""
        return f"{self._versioned}e:{collection}:*"

    def lookup_buckets(self, collection: str = "*", lookup: str = "*") -> str:
        return f"{self._versioned}lk:{collection}:{lookup}:*"

    def per_entity(self) -> list[str]:
        """SCAN patterns: the hashes kept per entity beside it (histories, parked events, the
        index of parked entities), which a snapshot carries as they are."""
        return [f"{self._versioned}h:*", f"{self._versioned}pk:*", self.parked]

    def relative(self, key: str | bytes) -> str:
        """A key of this version without the version's prefix (what a snapshot records)."""
        return self._rest(key, "")

    def absolute(self, relative: str) -> str:
        """The key of this version that `relative` names."""
        return self._versioned + relative

    def parse_bucket(self, key: str | bytes) -> tuple[str, int]:
        """(collection, bucket) of an entity bucket of this version."""
        collection, bucket = self._rest(key, "e:").rsplit(":", 1)
        return collection, int(bucket)

    def parse_lookup_bucket(self, key: str | bytes) -> tuple[str, str, int]:
        """(collection, lookup, bucket) of a lookup bucket of this version."""
        collection, rest = self._rest(key, "lk:").split(":", 1)
        lookup, bucket = rest.rsplit(":", 1)
        return collection, lookup, int(bucket)

    def parse_parked_bucket(self, key: str | bytes) -> str | None:
        """The collection of a hash of parked events of this version, else None."""
        return self._collection_of(key, "pk:")

    def parse_position(self, key: str | bytes) -> TopicPartition:
        topic, partition = self._rest(key, "pos:").rsplit(":", 1)
        return TopicPartition(topic, int(partition))

    def _collection_of(self, key: str | bytes, part: str) -> str | None:
        """The collection of a bucket `key` of the kind `part` (`h:`, `pk:`), else None."""
        try:
            collection, _ = self._rest(key, part).rsplit(":", 1)
        except ValueError:
            return None
        return collection

    def _rest(self, key: str | bytes, part: str) -> str:
        text = key.decode() if isinstance(key, bytes) else key
        head = self._versioned + part
        if not text.startswith(head):
            raise ValueError(f"{text!r} is not a key under {head!r}")
        return text[len(head) :]


def layout() -> list[tuple[str, str]]:
    """Every key as this keyspace formats it, with placeholders for its parts, and what it holds."""
    keys = Keyspace("<prefix>")
    keys.version = "<n>"  # type: ignore[assignment]  # a placeholder, as are those below
    bucket: Any = "<bucket>"
    partition: Any = "<partition>"
    return [
        (keys.pointer, "the live version: what queries read (a rebuild swaps it)"),
        (keys.freeze, "present while a snapshot export or a grow reads the model: commits wait"),
        (keys.rebuilding, "held by a running rebuild or grow: the version it writes"),
        (keys.rebuild_progress, "hash: a running rebuild's records done and total"),
        (keys.command("<command id>"), "hash: the status of a command this service sent"),
        (keys.handled("<command id>"), "a command this service handled (not handled again)"),
        (keys.commands_done, "pub/sub channel: the id of each command completed"),
        (keys.gaps_accepted, "stream: each gap an operator accepted, who, when (`gaps accept`)"),
        (
            keys.rate("<principal digest>", "<minute>"),  # type: ignore[arg-type]
            "the commands a principal sent in that minute (COMMANDS_PER_MINUTE)",
        ),
        (
            keys.bucket("<collection>", bucket),
            "hash: entity key -> entity JSON, NUL, its history (events applied, order,"
            " partitions, parked); NUL and history alone for an entity that does not exist",
        ),
        (
            keys.parked_bucket("<collection>", bucket),
            "hash: `<n>:<entity key>` -> the nth event of its parked sequence",
        ),
        (keys.parked, "hash: `<collection>:<entity key>` -> a parked sequence's summary"),
        (
            keys.lookup_bucket("<collection>", "<lookup>", bucket),
            "hash: value hash -> entity key, or a JSON list of keys",
        ),
        (
            keys.position(TopicPartition("<topic>", partition)),
            "the next offset to apply from that partition",
        ),
        (
            keys.unapplied("<topic>", partition, 0)[0],
            "hash: `<offset mod 1024>` -> `<offset> dead-lettered: <why>` (or `parked: <why>`), an"
            " event not applied",
        ),
        (keys.bootstrap, "`pending` until the version's bootstrap is done, then `done`"),
        (keys.layout, "the layout the version was written in (absent: 1)"),
        (keys.bucket_count_key, "its buckets per collection (absent: 1024), more as it grows"),
    ]
