"""Parked sequences (`dlq parked`, `dlq release`, `dlq skip`): what waits behind an entity, and
the operator's two ways to move it on.

`release` replays an entity's parked sequence in order, with the same rules as live events
(fold.py): after a fix of the projection, or once its entity exists. `skip` first drops the
sequence's first event: it is logged at WARNING and sent to the dead-letter topic, so it is set
aside, never lost; the rest replays. Both commit like a batch (commit.py): when the projector
writes the entity meanwhile, they read it again and replay again.
"""

import logging
from collections import Counter
from typing import Any, cast

import orjson

from ..commit import EntityRef, states
from ..deadletter import DeadLetter, DeadLetters
from ..errors import StartupError
from ..fold import Fold, History, parked_sequences, stored_writes
from ..projection import Registry
from ..readmodel import ReadModel
from ..settings import ServiceSettings
from .connections import clients, existing

log = logging.getLogger(__name__)


class SkippedByOperatorError(Exception):
    """The first event of a parked sequence, set aside by `dlq skip`."""


class NotParkedError(StartupError):
    """The entity named has no parked sequence (the command stops saying so)."""


async def parked(settings: ServiceSettings) -> list[dict[str, Any]]:
    """Every parked entity, the longest waiting first: collection, key, how many events wait,
    since when, why, and the first event's source."""
    async with clients(settings) as c:
        readmodel = await existing(c.readmodel)
        return await listed(readmodel)


async def listed(readmodel: ReadModel) -> list[dict[str, Any]]:
    keys = readmodel.keys
    found: dict[bytes, bytes] = cast(dict[bytes, bytes], await readmodel.redis.hgetall(keys.parked))
    refs = [keys.parse_parked_entity(name) for name in found]
    heads = await readmodel.batches.read_slots([keys.parked_event(*ref, 0) for ref in refs])
    entries = []
    for (collection, key), raw, first in zip(refs, found.values(), heads.values(), strict=True):
        where = None
        if first is not None:
            record = orjson.loads(first)
            where = f"{record['topic']}[{record['partition']}]@{record['offset']}"
        entries.append({"collection": collection, "key": key, **orjson.loads(raw), "head": where})
    return sorted(entries, key=lambda entry: entry["since"] or 0)


async def release(
    settings: ServiceSettings, registry: Registry, ref: EntityRef, *, skip_head: bool = False
) -> dict[str, Any]:
    """Replay `ref`'s parked sequence (without its first event when `skip_head`); returns how
    many events were applied, skipped and parked again."""
    async with clients(settings) as c:
        readmodel = await existing(c.readmodel)
        batches, keys = readmodel.batches, readmodel.keys
        dead_letters = DeadLetters(c.producer, settings.dlq_topic)
        while True:
            current, stored = await batches.read_with_histories([ref])
            history = History.loads(stored[ref])
            if not history.parked:
                raise NotParkedError(f"{ref[0]}/{ref[1]} has no parked events")
            before = states(registry.collections, current)
            histories = {ref: history}
            queues = await parked_sequences(batches, histories)
            fold = Fold(
                before,
                histories,
                queues,
                window=settings.idempotence_window,
                park_max=settings.park_max_events,
                reread=registry.reread,
            )
            skipped = fold.release(ref, skip_head=skip_head)
            writes = stored_writes(fold, keys, registry.collections, before, stored)
            letters = [DeadLetter(record, error) for record, error in fold.letters]
            letters += [
                DeadLetter(item.record, SkippedByOperatorError(f"skipped at {ref[0]}/{ref[1]}"))
                for item in skipped
            ]
            await dead_letters.send(letters)  # before the commit that drops them
            committed = await batches.commit({}, {}, current, writes, histories=stored)
            if committed == "ok":
                break
        for item in skipped:
            record = item.record
            log.warning(
                "skipped %s[%d]@%d, the first parked event of %s/%s, on an operator's command;"
                " it was sent to the dead-letter topic",
                record.topic,
                record.partition,
                record.offset,
                *ref,
            )
        outcomes: Counter[str] = Counter()
        for (_, _, outcome), count in fold.outcomes.items():
            outcomes[outcome] += count
        left = fold.histories[ref].parked
        return {"skipped": len(skipped), **outcomes, "still_parked": left}
