"""The projector: upstream Fact Events -> projections -> Redis, with an exactly-once effect.

Each `getmany` batch is folded in memory and written to Redis together with the position of every
partition it covers (see readmodel.py). On assignment the consumer seeks to the positions stored in
Redis; Kafka's committed offsets are written afterwards for lag monitoring only. Records a partition
has already applied are skipped, so a re-delivered batch changes nothing.
"""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from . import deadletter, logs
from .deadletter import DeadLetter
from .events import InvalidEventError
from .instruments import Instruments
from .kafka import Record, reached, seek
from .projection import Change, Registry
from .readmodel import EntityRef, ReadModel, ReadModelLostError, Writes, decoded, writes_for

log = logging.getLogger(__name__)


class Projector(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Consumes the upstream topics into the read model until `stop()` is called."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        readmodel: ReadModel,
        registry: Registry,
        *,
        dlq_topic: str,
        max_batch: int = 500,
        poll_timeout_ms: int = 200,
        handler_attempts: int = 3,
        retry_backoff_s: float = 0.05,
        mirror_to_kafka: bool = True,
        replay: bool = False,
        instruments: Instruments | None = None,
    ) -> None:
        self.consumer = consumer
        self._producer = producer
        self._readmodel = readmodel
        self._registry = registry
        self._dlq_topic = dlq_topic
        self._max_batch = max_batch
        self._poll_timeout_ms = poll_timeout_ms
        self._handler_attempts = handler_attempts
        self._retry_backoff_s = retry_backoff_s
        self._mirror_to_kafka = mirror_to_kafka
        # A replay (rebuild) re-reads events that were dead-lettered when first consumed: it
        # counts them again but publishes nothing.
        self._replay = replay
        self._instruments = instruments or Instruments()
        # Per assigned partition: the position this process last read from or wrote to Redis.
        self._positions: dict[TopicPartition, int | None] = {}
        # Held while a batch is in hand, so a rebalance waits for it to finish.
        self._batch_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._lost: ReadModelLostError | None = None
        self.assigned_once = asyncio.Event()
        self.applied = 0
        self.dead_lettered = 0

    # ------------------------------------------------------------------ rebalance listener
    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        async with self._batch_lock:
            for tp in revoked:
                self._positions.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        async with self._batch_lock:
            try:
                await self._seek_to_stored(list(assigned))
            except ReadModelLostError as exc:  # raised from run(), not into aiokafka
                self._lost = exc
        self.assigned_once.set()

    async def _seek_to_stored(self, tps: list[TopicPartition]) -> None:
        # Without its stored position a partition cannot be consumed safely: wait for Redis.
        async for attempt in AsyncRetrying(
            wait=wait_exponential(multiplier=0.1, max=5.0),
            retry=retry_if_exception_type(RedisError),
            before_sleep=lambda state: log.warning("reading positions: %r", state.outcome),
        ):
            with attempt:
                if self._readmodel.live and await self._readmodel.refresh():
                    log.info("read model swapped to version %d", self._readmodel.version)
                stored = await self._readmodel.positions(tps)
        self._positions.update(stored)
        await seek(self.consumer, stored)

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
        """
        self._lost = None
        if self._positions:  # run before: the stored positions may have changed since
            async with self._batch_lock:
                await self._seek_to_stored(list(self._positions))
        start = sum(self._positions.get(tp) or 0 for tp in until or {})
        while not self._stopping.is_set():
            if self._lost is not None:
                raise self._lost
            if until is not None:
                if progress is not None:
                    done = sum(self._positions.get(tp) or 0 for tp in until) - start
                    progress(done, sum(until.values()) - start)
                if await self._reached(until):
                    return
            batches = await self.consumer.getmany(
                timeout_ms=self._poll_timeout_ms, max_records=self._max_batch
            )
            if not batches:
                await self._follow_swap()
                continue
            try:
                async with self._batch_lock:
                    committed = await self._apply(batches)
            except (RedisError, KafkaError) as exc:
                # Nothing of the batch was committed: wait, then read it again from Redis positions
                log.warning("batch failed, retrying from the stored positions: %r", exc)
                await asyncio.sleep(1.0)
                async with self._batch_lock:
                    await self._seek_to_stored(list(self._positions))
                continue
            # Outside the lock: a commit waits for a rebalance, which waits for the lock.
            await self._commit_to_kafka(committed)

    def lag(self) -> dict[str, int | None]:
        """Records behind the broker's high watermark, per assigned partition (None: unknown)."""
        lags: dict[str, int | None] = {}
        for tp, position in self._positions.items():
            highwater = self.consumer.highwater(tp)
            lags[f"{tp.topic}[{tp.partition}]"] = (
                None if highwater is None else max(0, highwater - (position or 0))
            )
        return lags

    async def _follow_swap(self) -> None:
        """While idle, notice a rebuild's swap (a busy projector notices at its next commit)."""
        try:
            if self._readmodel.live and await self._readmodel.refresh():
                async with self._batch_lock:
                    await self._seek_to_stored(list(self._positions))
        except RedisError as exc:
            log.debug("version check failed: %r", exc)

    async def _reached(self, until: Mapping[TopicPartition, int]) -> bool:
        return self._positions.keys() >= until.keys() and await reached(self.consumer, until)

    async def _apply(
        self, batches: dict[TopicPartition, list[Record]]
    ) -> dict[TopicPartition, int]:
        """Project a batch and commit it to Redis; returns the positions committed."""
        expected: dict[TopicPartition, int | None] = {}
        new: dict[TopicPartition, int] = {}
        records: list[Record] = []
        for tp, batch in batches.items():
            if tp not in self._positions:  # revoked while the batch was fetched
                continue
            start = self._positions[tp]
            fresh = [r for r in batch if start is None or r.offset >= start]
            if fresh:
                expected[tp], new[tp] = start, fresh[-1].offset + 1
                records.extend(fresh)
        if not records:
            return {}

        started = time.perf_counter()
        rejected: list[DeadLetter] = []
        work: list[tuple[Record, list[Change]]] = []
        applied: Counter[tuple[str, str]] = Counter()
        for record in records:
            try:
                event_type, changes = self._registry.read(record.value, record.headers)
                work.append((record, changes))
                applied[record.topic, event_type] += 1
            except InvalidEventError as exc:
                rejected.append(DeadLetter(record, exc))
        await self._dead_letter(rejected)

        refs = list(dict.fromkeys((c.collection.name, c.key) for _, cs in work for c in cs))
        # A concurrent write makes the batch fold again: what it dead-lettered stays sent.
        sent: set[tuple[str, int, int]] = set()

        async def fold(current: list[bytes | None]) -> Writes:
            return await self._fold(work, dict(zip(refs, current, strict=True)), sent)

        if await self._readmodel.commit(expected, new, refs, fold):
            self._positions.update(new)
            self.applied += len(work)
            self.dead_lettered += len(rejected)
            instruments = self._instruments
            for (topic, event_type), count in applied.items():
                instruments.events_applied.labels(topic, event_type).inc(count)
            instruments.batch_seconds.observe(time.perf_counter() - started)
            instruments.batch_events.observe(len(records))
            return new
        log.warning("partitions moved on or version swapped; re-seeking %s", sorted(expected))
        await self._seek_to_stored(list(expected))
        return {}

    async def _fold(
        self,
        work: list[tuple[Record, list[Change]]],
        current: dict[EntityRef, bytes | None],
        sent: set[tuple[str, int, int]],
    ) -> Writes:
        collections = self._registry.collections
        before: dict[EntityRef, Any] = dict.fromkeys(current)
        stored = {ref: raw for ref, raw in current.items() if raw is not None}
        before.update(decoded(collections, stored))
        states = dict(before)
        failed: list[DeadLetter] = []
        for record, changes in work:
            try:  # the common case, without a coroutine per event
                states.update(_applied(changes, states))
                continue
            except Exception as exc:
                error = exc
            outcome = await self._retry(record, changes, states, error)
            if not isinstance(outcome, DeadLetter):
                states.update(outcome)
            elif (where := (record.topic, record.partition, record.offset)) not in sent:
                failed.append(outcome)
                sent.add(where)
        await self._dead_letter(failed)
        self.dead_lettered += len(failed)
        return writes_for(collections, before, states)

    async def _dead_letter(self, letters: list[DeadLetter]) -> None:
        if letters and not self._replay:
            await deadletter.publish(self._producer, self._dlq_topic, letters)
            for letter in letters:
                error = type(letter.error).__name__
                self._instruments.dead_letters.labels(letter.record.topic, error).inc()

    async def _retry(
        self, record: Record, changes: list[Change], states: dict[EntityRef, Any], error: Exception
    ) -> dict[EntityRef, Any] | DeadLetter:
        """Apply a failed event's changes again, all or none; dead-letter it if it keeps failing."""
        attempt = 1
        while attempt < self._handler_attempts:
            with logs.handling(changes[0].event.id if changes else _where(record)):
                log.warning("projecting %s failed (attempt %d): %r", _where(record), attempt, error)
            await asyncio.sleep(self._retry_backoff_s * 2 ** (attempt - 1))
            attempt += 1
            try:
                return _applied(changes, states)
            except Exception as exc:
                error = exc
        return DeadLetter(record, error, attempts=attempt)

    async def _commit_to_kafka(self, new: dict[TopicPartition, int]) -> None:
        """Mirror positions into Kafka so lag monitoring sees them; Redis stays the authority."""
        if not new or not self._mirror_to_kafka:
            return
        try:
            await self.consumer.commit(new)
        except KafkaError as exc:
            log.debug("offset commit for monitoring failed: %r", exc)


def _applied(changes: list[Change], states: dict[EntityRef, Any]) -> dict[EntityRef, Any]:
    """The states one event's changes lead to (raising leaves `states` untouched)."""
    updated: dict[EntityRef, Any] = {}
    for change in changes:
        ref = (change.collection.name, change.key)
        updated[ref] = change.apply(updated.get(ref, states[ref]), change.event)
    return updated


def _where(record: Record) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"
