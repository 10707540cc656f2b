"""The projector: upstream Fact Events -> projections -> Redis, with an exactly-once effect.

For each `getmany` batch, the entities it changes are read from Redis, the batch is folded onto
them in memory, and the outcome committed to Redis together with the position of every partition it
covers (commit.py); when another consumer wrote one of those entities meanwhile, they are read and
the batch folded again. A batch's commit runs in Redis while the next batch is folded, on the
states it writes (`_advance`); entities the projector committed itself are folded from what it
committed (`EntityCache`), not read again, and checked by the commit all the same. On assignment
the consumer seeks to the positions stored in Redis; Kafka's committed offsets are written
afterwards for lag monitoring only. Records a partition has already applied are skipped, so a
re-delivered batch changes nothing.

A stored position outside its partition's log is a gap: before its start, the records between were
deleted before they were applied; past its end, the topic was created again or its log truncated.
It is found when the consumer seeks to the stored positions, and when a fetch is refused as out of
range (the service's consumer never moves to the earliest offset by itself). The partition is
paused, not skipped past: it is reported once (an ERROR line, `bff_gaps_detected`) and listed in
`gaps` until its stored position moves (a recovery from a snapshot, or an operator accepting the
loss: gaps.py), while the other partitions go on. A job (`until`) raises GapError instead.

A record the Kafka client cannot parse is dead-lettered by its position (kafka/unreadable.py),
together with the rest of its record batch, which cannot be read past it, and committed past like
any other.

Dead letters are published before the commit that moves past them, so none is lost: once per batch
however often it is folded, and counted when it commits. A crash before the commit, or a batch
whose partitions moved on meanwhile (a rebalance, a rebuild's swap), leaves them to be published
again by whoever applies the batch: at-least-once, recognisable by their source offsets.
"""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from .commit import EntityRef, Sent, Writes, states
from .deadletter import DeadLetter, DeadLetters, Retry
from .errors import without_addresses
from .events import InvalidEventError
from .fold import (
    Fold,
    History,
    Work,
    dead_lettered,
    note_unapplied,
    parked_sequences,
    stored_writes,
)
from .kafka import Gap, GapError, Record, gaps, known_positions, reached, seek
from .kafka.unreadable import Unreadable, UnreadableRecord, locate, readable_before
from .observability import logs
from .observability.instruments import Instruments
from .projection import Registry
from .readmodel import ReadModel
from .settings import ServiceSettings
from .versions import NewerLayoutError, ReadModelLostError

log = logging.getLogger(__name__)

FAILED_BATCH_MAX_WAIT_S = 30.0  # the longest wait between tries of a batch that keeps failing


class EntityCache:
    """What a projector last committed of each entity, its JSON and its history as stored (None:
    absent), so its next events are folded without reading them from Redis. An optimistic read:
    each commit still checks every entity and history it was folded from against Redis, so one
    that another writer changed meanwhile costs a fold again, from Redis, never a wrong write. An
    entity found changed so is kept no more (`contest`): another writer shares it. Keeps the
    `limit` entities committed last (PROJECTOR_CACHED_ENTITIES)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._entities: dict[EntityRef, tuple[bytes | None, bytes | None]] = {}
        self._contested: dict[EntityRef, None] = {}

    def get(self, refs: list[EntityRef]) -> dict[EntityRef, tuple[bytes | None, bytes | None]]:
        entities = self._entities
        return {ref: entities[ref] for ref in refs if ref in entities}

    def commit(
        self,
        read: Mapping[EntityRef, bytes | None],
        histories: Mapping[EntityRef, bytes | None],
        writes: Writes,
    ) -> None:
        """Keep what a batch folded from `read` and `histories` left, once committed."""
        if not self._limit:
            return
        entities, states, written = self._entities, writes.states, writes.histories
        for ref, json in read.items():
            if ref in self._contested:
                continue
            entities.pop(ref, None)  # to the end: the oldest are let go first
            entities[ref] = states.get(ref, json), written.get(ref, histories[ref])
        for ref in list(islice(entities, max(0, len(entities) - self._limit))):
            del entities[ref]

    def contest(self, refs: Iterable[EntityRef]) -> None:
        for ref in refs:
            self._entities.pop(ref, None)
            self._contested[ref] = None
        for ref in list(islice(self._contested, max(0, len(self._contested) - self._limit))):
            del self._contested[ref]

    def clear(self) -> None:
        self._entities.clear()
        self._contested.clear()


@dataclass(slots=True)
class _Batch:
    """A batch's records not applied yet, read; once folded, its writes and dead letters and
    its commit once sent."""

    expected: dict[TopicPartition, int | None]  # the positions it starts from
    new: dict[TopicPartition, int]  # the positions it commits
    work: Work
    rejected: list[DeadLetter]  # records that are no valid event
    started: float = field(default_factory=time.perf_counter)
    sent: set[tuple[str, int, int]] = field(default_factory=set)  # dead letters sent (sources)
    read: dict[EntityRef, bytes | None] = field(default_factory=dict)  # entities, as read
    histories: dict[EntityRef, bytes | None] = field(default_factory=dict)  # as read
    writes: Writes = field(default_factory=Writes)
    folded: Fold | None = None
    letters: list[DeadLetter] = field(default_factory=list)
    commit: Sent | None = None

    def refs(self) -> list[EntityRef]:
        return list(dict.fromkeys((c.collection.name, c.key) for _, cs in self.work for c in cs))

    def parks(self) -> bool:
        """Whether its fold read or changed parked sequences."""
        return self.folded is not None and bool(self.folded.queues or self.folded.rewritten)


class Projector(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Consumes its consumer's partitions into the read model until `stop()` is called: the
    projector of `serve`, of a rebuild (into a version not live yet, with dead letters that send
    nothing) and of a redrive (from the dead-letter topic)."""

    def __init__(
        self,
        settings: ServiceSettings,
        consumer: AIOKafkaConsumer,
        readmodel: ReadModel,
        registry: Registry,
        dead_letters: DeadLetters,
        instruments: Instruments | None = None,
    ) -> None:
        self.consumer = consumer
        self._readmodel = readmodel
        self._batches = readmodel.batches
        self._registry = registry
        self._dead_letters = dead_letters
        self._retry = Retry.of(settings)
        self._window = settings.idempotence_window
        self._park_max = settings.park_max_events
        self._conflicted: set[str] = set()  # topics whose partition conflicts were logged
        self._max_batch = settings.consumer_max_batch
        self._poll_timeout_ms = settings.consumer_poll_timeout_ms
        self._instruments = instruments or Instruments()
        # A job's consumer (rebuild, redrive) has no group, so no offsets to commit in Kafka.
        self._grouped = consumer._group_id is not None  # aiokafka does not make it public
        # Per assigned partition: the position this process last read from or wrote to Redis.
        self._positions: dict[TopicPartition, int | None] = {}
        # Held while a batch is in hand, so a rebalance waits for it to finish.
        self._batch_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._lost: ReadModelLostError | NewerLayoutError | None = None
        self.assigned_once = asyncio.Event()
        self.applied = 0
        self.dead_lettered = 0
        self.committed_at = time.monotonic()  # the last batch committed (or the start)
        self.failing: str | None = None  # why the last batch failed, until one commits
        self.gaps: dict[TopicPartition, Gap] = {}  # assigned partitions paused on a gap
        self._reported: set[tuple[TopicPartition, int]] = set()  # gaps logged (and counted)
        # Per partition, how often it was sought: what a fetch begun before a seek returns of it
        # is from the old position (the consumer's committed offset, on assignment), so dropped.
        self._sought: Counter[TopicPartition] = Counter()
        # The batch folded last: it is committed while the next one is folded.
        self._pending: _Batch | None = None
        self._cache = EntityCache(settings.projector_cached_entities)

    # ------------------------------------------------------------------ rebalance listener
    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        async with self._batch_lock:
            await self._settle_quietly()
            self._cache.clear()
            for tp in revoked:
                self._positions.pop(tp, None)
                self.gaps.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        async with self._batch_lock:
            try:
                await self._seek_to_stored(list(assigned), found_on="assignment")
            except (ReadModelLostError, NewerLayoutError) as exc:
                self._lost = exc  # raised from run(), not into aiokafka
        self.assigned_once.set()

    async def _seek_to_stored(self, tps: list[TopicPartition], found_on: str = "seek") -> None:
        await self._settle_quietly()  # what it commits moves the stored positions
        self._cache.clear()  # others may write what this projector wrote until now
        # Without its stored position a partition cannot be consumed safely: wait for Redis.
        async for attempt in AsyncRetrying(
            wait=wait_exponential(multiplier=0.1, max=5.0),
            retry=retry_if_exception_type(RedisError),
            before_sleep=lambda state: log.warning("reading positions: %r", state.outcome),
        ):
            with attempt:
                await self._follow_version()
                stored = await self._batches.positions(tps)
        self._positions.update(stored)
        found = await gaps(self.consumer, stored)
        closed = [tp for tp in tps if tp in self.gaps and tp not in found]
        for gap in found.values():
            self._stop(gap, found_on)
        await seek(self.consumer, stored)
        self._sought.update(tps)
        for tp in closed:  # its stored position moved (accepted, or recovered): from there on
            del self.gaps[tp]
            self.consumer.resume(tp)
            log.warning("%s[%d] resumes at %s", tp.topic, tp.partition, stored[tp])

    def _stop(self, gap: Gap, found_on: str) -> None:
        """Pause a partition on a gap; log and count it the first time."""
        self.consumer.pause(gap.tp)
        self.gaps[gap.tp] = gap
        if (gap.tp, gap.position) in self._reported:
            return
        self._reported.add((gap.tp, gap.position))
        self._instruments.gaps_detected.labels(gap.tp.topic).inc()
        log.error(
            "gap on %s (found on %s): partition stopped until it is recovered from a newer"
            " snapshot or the loss is accepted (`gaps accept`)",
            gap.describe(),
            found_on,
            extra={f"gap_{name}": value for name, value in gap.as_dict().items()},
        )

    async def _out_of_range(self, offsets: Mapping[TopicPartition, int]) -> None:
        """A fetch refused: the offset is not in the log, a gap (kafka/positions.py); one met
        before the assignment's seek is left to it."""
        async with self._batch_lock:
            tps = [tp for tp in offsets if tp in self._positions]
            if tps:
                await self._seek_to_stored(tps, found_on="fetch")
        past = [(tp, offsets[tp]) for tp in tps if tp not in self.gaps]
        if past:  # inside the log when looked at again: it moved meanwhile
            if not self._reported.issuperset(past):
                self._reported.update(past)
                where = ", ".join(_where_tp(tp, offset) for tp, offset in past)
                log.error("fetch out of range at %s, inside the log since: retrying", where)
            await asyncio.sleep(1.0)

    async def _follow_version(self) -> bool:
        """Move to the live version if a rebuild swapped it; True when it did."""
        if self._readmodel.live and await self._readmodel.versions.refresh():
            log.info("read model swapped to version %d", self._readmodel.keys.version)
            return True
        return False

    # ------------------------------------------------------------------ main loop
    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and return."""
        self._stopping.set()

    async def run(
        self,
        until: Mapping[TopicPartition, int] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Project until `stop()`, or until every partition has reached its offset in `until`
        (reporting `progress(done, total)` in records on the way).

        Raises ReadModelLostError when the read model is gone from Redis, or being bootstrapped
        again; once it is back, `run()` again carries on from the positions stored then.
        Raises NewerLayoutError when the live version is in a layout newer than this release's.
        """
        self._lost = None
        if self._positions:  # run before: the stored positions may have changed since
            async with self._batch_lock:
                await self._seek_to_stored(list(self._positions))
        start = sum(self._positions.get(tp) or 0 for tp in until or {})
        failures = 0
        try:
            while not self._stopping.is_set():
                if self._lost is not None:
                    raise self._lost
                if until is not None and self.gaps:
                    raise GapError(list(self.gaps.values()))
                if until is not None:
                    if progress is not None:
                        done = sum(self._positions.get(tp) or 0 for tp in until) - start
                        progress(done, sum(until.values()) - start)
                    if await self._reached(until):
                        async with self._batch_lock:
                            committed = await self._settle()
                        await self._commit_to_kafka(committed)  # outside the lock: see below
                        if await self._reached(until):  # the last commit did not move on
                            return
                sought = self._sought.copy()
                # With a batch folded, only what is fetched already: else it is committed now,
                # not after a wait for more.
                waits = self._pending is None
                try:
                    batches = await self.consumer.getmany(
                        timeout_ms=self._poll_timeout_ms if waits else 0,
                        max_records=self._max_batch,
                    )
                except OffsetOutOfRangeError as exc:
                    await self._out_of_range(exc.args[0])
                    continue
                except NoOffsetForPartitionError:
                    continue  # assigned, not sought yet: the rebalance listener seeks it
                except Exception as exc:
                    unreadable = locate(exc)
                    if unreadable is None:
                        raise
                    batches = await self._past(unreadable)
                    sought = self._sought.copy()
                try:
                    async with self._batch_lock:
                        if batches:
                            committed = await self._advance(batches, sought)
                        else:
                            committed = await self._settle()
                except (RedisError, KafkaError) as exc:
                    # Nothing of the batch was committed: wait, then read it again from Redis
                    # positions; the wait grows while it keeps failing, and the first failure of
                    # a run of them is logged at WARNING (the watchdog reports a stall it causes).
                    failures += 1
                    if self.failing is None:
                        log.warning("batch failed, retrying from the stored positions: %r", exc)
                    failure = f"batch failed: {type(exc).__name__}: {exc}"
                    self.failing = without_addresses(failure)[:300]
                    await asyncio.sleep(min(FAILED_BATCH_MAX_WAIT_S, 0.25 * 2**failures))
                    async with self._batch_lock:
                        await self._seek_to_stored(list(self._positions))
                    continue
                if committed:
                    failures, self.failing = 0, None
                # Outside the lock: a commit waits for a rebalance, which waits for the lock.
                await self._commit_to_kafka(committed)
                if not batches and waits:
                    await self._when_idle()
        finally:
            async with self._batch_lock:
                await self._settle_quietly()

    async def _current(
        self, batches: dict[TopicPartition, list[Record]], sought: Counter[TopicPartition]
    ) -> dict[TopicPartition, list[Record]]:
        """The batch without the partitions on a gap, nor those sought since the fetch began
        (`sought`): those may be from where the consumer was before; they are read again."""
        stale = {
            tp: self._positions[tp]
            for tp in batches
            if self._sought[tp] != sought[tp] and tp in self._positions and tp not in self.gaps
        }
        if stale:
            await seek(self.consumer, stale)
        return {tp: b for tp, b in batches.items() if tp not in self.gaps and tp not in stale}

    def lose(self, reason: ReadModelLostError) -> None:
        """Have `run()` raise `reason` (the read model is being bootstrapped again)."""
        self._lost = reason

    async def recheck(self, tps: list[TopicPartition]) -> None:
        """Seek partitions to their stored positions again (one stopped on a gap resumes once its
        position is at or past the log start)."""
        async with self._batch_lock:
            await self._seek_to_stored([tp for tp in tps if tp in self._positions])

    def lag(self) -> dict[str, int | None]:
        """Records behind the broker's high watermark, per assigned partition (None: unknown)."""
        lags: dict[str, int | None] = {}
        for tp, position in self._positions.items():
            highwater = self.consumer.highwater(tp)
            lags[f"{tp.topic}[{tp.partition}]"] = (
                None if highwater is None else max(0, highwater - (position or 0))
            )
        return lags

    async def _when_idle(self) -> None:
        """While idle, notice a rebuild's swap (a busy projector notices at its next commit), and
        store the positions the consumer moved past offsets that hold no record for it."""
        try:
            if await self._follow_version():
                async with self._batch_lock:
                    await self._seek_to_stored(list(self._positions))
            else:
                await self._commit_to_kafka(await self._step_over_empty_offsets())
        except RedisError as exc:
            log.debug("idle check failed: %r", exc)

    async def _step_over_empty_offsets(self) -> dict[TopicPartition, int]:
        """Store positions past transaction markers and aborted records: a stored position is
        the last record's offset + 1, so a partition ending in a marker (as every transactional
        producer leaves) would otherwise stay one behind its end for ever. Idle, everything the
        consumer handed out is applied: what it moved past since holds nothing to apply."""
        async with self._batch_lock:
            expected: dict[TopicPartition, int | None] = {}
            new: dict[TopicPartition, int] = {}
            ungapped = [tp for tp in self._positions if tp not in self.gaps]
            for tp, position in known_positions(self.consumer, ungapped).items():
                stored = self._positions[tp]
                if position > (stored or 0):
                    expected[tp], new[tp] = stored, position
            if not new:
                return {}
            if await self._batches.commit(expected, new, {}, Writes()) != "ok":
                await self._seek_to_stored(list(expected))
                return {}
            self._positions.update(new)
            self.committed_at = time.monotonic()
            return new

    async def _past(self, where: Unreadable) -> dict[TopicPartition, list[Record]]:
        """The batch that takes `where.tp` past a record the client cannot parse: the records
        before it, then a stand-in for each position from it to the end of its record batch (each
        a dead letter). The consumer is left after them; the other partitions at their stored
        positions (what getmany() had gathered of them is lost)."""
        log.warning(
            "the Kafka client cannot parse %s: %r", _where_tp(where.tp, where.offset), where.error
        )
        async with self._batch_lock:
            await self._seek_to_stored(list(self._positions))
            if where.tp not in self._positions:  # revoked meanwhile
                return {}
            before = await readable_before(self.consumer, where, timeout_ms=self._poll_timeout_ms)
            if before is None:
                return {}
            records, position = before
            self.consumer.seek(where.tp, where.end)
        past: list[Record] = [*records, *where.records(position)]
        return {where.tp: past}

    async def _reached(self, until: Mapping[TopicPartition, int]) -> bool:
        return self._positions.keys() >= until.keys() and await reached(self.consumer, until)

    def _batch(
        self, batches: Mapping[TopicPartition, list[Record]], after: "_Batch | None"
    ) -> "_Batch | None":
        """The records of `batches` not applied yet, read, from the stored positions, or from
        those `after` commits; None when there are none."""
        base = self._positions if after is None else {**self._positions, **after.new}
        expected: dict[TopicPartition, int | None] = {}
        new: dict[TopicPartition, int] = {}
        records: list[Record] = []
        for tp, batch in batches.items():
            if tp not in self._positions:  # revoked while the batch was fetched
                continue
            start = base[tp]
            fresh = [r for r in batch if start is None or r.offset >= start]
            if fresh:
                expected[tp], new[tp] = start, fresh[-1].offset + 1
                records.extend(fresh)
        if not records:
            return None
        rejected: list[DeadLetter] = []
        work: Work = []
        for record in records:
            try:
                _, changes = self._registry.read(record.value, record.headers)
                work.append((record, changes))
            except InvalidEventError as exc:
                error = record.error if isinstance(record, UnreadableRecord) else exc
                rejected.append(DeadLetter(record, error))
        return _Batch(expected, new, work, rejected)

    async def _read(self, batch: "_Batch", after: "_Batch | None", fresh: bool = False) -> None:
        """Read the batch's entities and histories, as `after` leaves those it writes: from the
        cache where it holds them (unless `fresh`), else from Redis."""
        refs = batch.refs()
        cached = {} if fresh else self._cache.get(refs)
        current, histories = await self._batches.read_with_histories(
            [ref for ref in refs if ref not in cached]
        )
        for ref, (entity, history) in cached.items():
            current[ref], histories[ref] = entity, history
        if after is not None:
            states, written = after.writes.states, after.writes.histories
            for ref in current.keys() & states.keys():
                current[ref] = states[ref]
            for ref in histories.keys() & written.keys():
                histories[ref] = written[ref]
        batch.read, batch.histories = current, histories

    async def _fold_read(self, batch: "_Batch") -> None:
        """Fold the batch onto what was read, and send its dead letters (once however often it
        is folded)."""
        batch.writes, batch.folded, letters = await self._fold(
            batch.work, batch.read, batch.histories
        )
        batch.letters = batch.rejected + letters
        rejected = [(letter.record, dead_lettered(letter.error)) for letter in batch.rejected]
        note_unapplied(batch.writes, self._batches.keys, rejected)
        unsent = [letter for letter in batch.letters if _source(letter) not in batch.sent]
        await self._dead_letters.send(unsent)
        batch.sent.update(map(_source, unsent))

    async def _send(self, batch: "_Batch") -> None:
        """Write the batch's commit out; its answer is read later (`_commit_of`). The batch
        before it must have committed: Redis runs scripts in the order they arrive, and two
        sent from two connections may arrive in either order."""
        batch.commit = await self._batches.send(
            batch.expected, batch.new, batch.read, batch.writes, histories=batch.histories
        )

    async def _advance(
        self, batches: dict[TopicPartition, list[Record]], sought: Counter[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Read the batch; commit the one folded before it while folding this one, from what
        that commit writes; returns the positions committed. This batch is committed by the
        next call, or by `_settle()`. Each commit checks every position and entity its fold
        assumed, so a batch folded on one that then does not commit as it was folded fails too,
        and is folded again or sought again like any other. A batch that read or changed parked
        sequences (stored apart, read by a fold) is committed before the next is read."""
        before = self._pending
        committed: dict[TopicPartition, int] = {}
        if before is not None and before.parks():
            committed, before = await self._settle(), None
        batch = self._batch(await self._current(batches, sought), before)
        if batch is None:
            return committed | await self._settle()
        await self._read(batch, before)  # while Redis has nothing to do: no commit in flight
        if before is not None:
            await self._send(before)
        await self._fold_read(batch)
        committed |= await self._settle()
        self._pending = batch
        return committed

    async def _settle(self) -> dict[TopicPartition, int]:
        """Commit the batch folded last, if any; returns the positions it committed."""
        batch, self._pending = self._pending, None
        if batch is None:
            return {}
        if batch.commit is None:
            await self._send(batch)
        return await self._commit_of(batch)

    async def _settle_quietly(self) -> None:
        """Settle, whatever the commit's outcome: a caller about to read the stored positions
        again wants only that nothing is left to commit."""
        try:
            await self._settle()
        except Exception as exc:  # the stored positions say what it did
            log.debug("the last batch's commit failed: %r", exc)

    async def _commit_of(self, batch: "_Batch") -> dict[TopicPartition, int]:
        """The positions `batch` committed ({} when its partitions moved on: they are sought
        again). While an entity it read was changed meanwhile (a join, or the batch before it
        folded again), it is read and folded again."""
        assert batch.commit is not None
        while (outcome := await batch.commit.outcome()) == "changed":
            read, histories = batch.read, batch.histories
            await self._read(batch, None, fresh=True)
            self._cache.contest(
                ref
                for ref in read
                if (read[ref], histories[ref]) != (batch.read[ref], batch.histories[ref])
            )
            await self._fold_read(batch)
            await self._send(batch)
        if outcome == "moved":
            log.warning(
                "partitions moved on or version swapped; re-seeking %s", sorted(batch.expected)
            )
            await self._seek_to_stored(list(batch.expected))
            return {}
        assert batch.folded is not None
        self._cache.commit(batch.read, batch.histories, batch.writes)
        self._positions.update(batch.new)
        self.committed_at = time.monotonic()
        self.dead_lettered += len(batch.letters)
        self._report(batch.folded, batch.work)
        instruments = self._instruments
        instruments.batch_seconds.observe(time.perf_counter() - batch.started)
        instruments.batch_events.observe(len(batch.work) + len(batch.rejected))
        return batch.new

    async def _fold(
        self,
        work: Work,
        current: Mapping[EntityRef, bytes | None],
        stored: Mapping[EntityRef, bytes | None],
    ) -> tuple[Writes, Fold, list[DeadLetter]]:
        """Fold the batch onto the `current` states and `stored` histories (fold.py). While
        events raise, the batch is folded again after a wait (a fold is synchronous: nothing waits
        within it), until they have failed every attempt: then they are parked."""
        collections = self._registry.collections
        before = states(collections, current)

        def histories() -> dict[EntityRef, History]:  # a fold changes those it is given
            return {ref: History.loads(raw) for ref, raw in stored.items()}

        first = histories()
        queues = await parked_sequences(self._batches, first)

        def fold(
            histories: dict[EntityRef, History], give_up: Mapping[int, Exception] | None = None
        ) -> Fold:
            return Fold(
                before,
                histories,
                queues,
                window=self._window,
                park_max=self._park_max,
                give_up=give_up,
                reread=self._registry.reread,
            ).run(work)

        folded = fold(first)
        attempt = 1
        while folded.failed and attempt < self._retry.attempts:
            for index, error in folded.failed.items():
                record, changes = work[index]
                where = _where(record)
                with logs.handling(changes[0].event.id if changes else where):
                    log.warning("projecting %s failed (attempt %d): %r", where, attempt, error)
            await self._retry.wait(attempt)
            attempt += 1
            folded = fold(histories())
        give_up: dict[int, Exception] = {}
        while folded.failed:  # every attempt failed: park them, with the entities they change
            give_up.update(folded.failed)
            folded = fold(histories(), give_up)
        writes = stored_writes(folded, self._batches.keys, collections, before, stored)
        letters = [DeadLetter(record, error) for record, error in folded.letters]
        return writes, folded, letters

    def _report(self, folded: Fold, work: Work) -> None:
        """Count what the batch did to each entity, and report partitions that disagree."""
        instruments = self._instruments
        for (topic, event_type, outcome), count in folded.outcomes.items():
            if outcome == "applied":
                instruments.events_applied.labels(topic, event_type).inc(count)
                self.applied += count
            elif outcome == "parked":
                instruments.events_parked.labels(topic, event_type).inc(count)
            else:
                instruments.events_skipped.labels(topic, event_type, outcome).inc(count)
        for record, changes in work:
            if not changes:  # a type this service knowingly ignores
                instruments.events_skipped.labels(record.topic, "", "ignored").inc()
        for (collection, key), record, reason in folded.newly_parked:  # once: as committed
            log.warning(
                "parked %s/%s at %s: %s (it and the entity's later events wait: `dlq parked`)",
                collection,
                key,
                _where(record),
                reason,
            )
        for (collection, key), record, other in folded.conflicts:
            instruments.partition_conflicts.labels(record.topic).inc()
            if record.topic not in self._conflicted:
                self._conflicted.add(record.topic)
                log.warning(
                    "%s/%s has events from %s partitions %d and %d: the upstream does not key"
                    " this entity's events alike, so their order is not kept (reported once per"
                    " topic; bff_entity_partition_conflicts_total counts them all)",
                    collection,
                    key,
                    record.topic,
                    other,
                    record.partition,
                )

    async def _commit_to_kafka(self, new: dict[TopicPartition, int]) -> None:
        """Mirror positions into Kafka so lag monitoring sees them; Redis stays the authority."""
        if not new or not self._grouped:
            return
        try:
            await self.consumer.commit(new)
        except KafkaError as exc:
            log.debug("offset commit for monitoring failed: %r", exc)


def _source(letter: DeadLetter) -> tuple[str, int, int]:
    record = letter.record
    return record.topic, record.partition, record.offset


def _where(record: Record) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"


def _where_tp(tp: TopicPartition, offset: int) -> str:
    return f"{tp.topic}[{tp.partition}]@{offset}"
