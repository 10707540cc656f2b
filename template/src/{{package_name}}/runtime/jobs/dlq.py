"""The dead-letter topic (`dlq list`, `dlq redrive`): `dead_letters` lists what it holds, `redrive`
projects it again.

Redrive does not publish anything back to the source topics (the service does not own them): it
projects the dead letters themselves, with the same machinery and the same exactly-once effect as
live events, its position in the dead-letter topic kept in Redis. A letter that fails again is
dead-lettered again, keeping its first source and counting its attempts.
"""

import base64
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from ..deadletter import HEADER_PREFIX, DeadLetters, reason_of
from ..kafka import assign_all, reached, seek
from ..projection import Registry
from ..projector import Projector
from ..settings import ServiceSettings
from .connections import clients, existing


async def dead_letters(settings: ServiceSettings, *, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` dead letters, oldest first, each with its reason."""
    async with clients(settings) as c:
        tps = await assign_all(c.consumer, settings, settings.dlq_topic)
        await seek(c.consumer, dict.fromkeys(tps))
        end: dict[TopicPartition, int] = await c.consumer.end_offsets(tps)
        letters: list[dict[str, Any]] = []
        while len(letters) < limit and not await reached(c.consumer, end):
            try:
                batches = await c.consumer.getmany(
                    timeout_ms=1000, max_records=limit - len(letters)
                )
            except OffsetOutOfRangeError as exc:  # retention deleted letters: they are gone
                await seek(c.consumer, dict.fromkeys(exc.args[0]))
                continue
            for records in batches.values():
                letters.extend(_describe(record) for record in records)
        return sorted(letters, key=lambda letter: (letter["time"], letter["partition"]))[:limit]


def _describe(record: Any) -> dict[str, Any]:
    return {
        "partition": record.partition,
        "offset": record.offset,
        "time": reason_of(record).get("time", ""),
        "key": None if record.key is None else record.key.decode(errors="replace"),
        "reason": reason_of(record),
        # What the record carried besides the value (a binary-mode event's `ce_*` attributes).
        "headers": [
            [name, _shown(value)]
            for name, value in record.headers
            if not name.startswith(HEADER_PREFIX)
        ],
        "value": _shown(record.value),
    }


def _shown(raw: bytes | None) -> str | None:
    """Text as it is; other bytes as `base64:...`."""
    try:
        return None if raw is None else raw.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw or b"").decode()


async def redrive(settings: ServiceSettings, registry: Registry) -> Projector:
    """Project every dead letter present now; returns the projector, which counts the outcome."""
    async with clients(settings) as c:
        tps = await assign_all(c.consumer, settings, settings.dlq_topic)
        end = await c.consumer.end_offsets(tps)
        dead_letters = DeadLetters(c.producer, settings.dlq_topic)
        projector = Projector(
            settings, c.consumer, await existing(c.readmodel), registry, dead_letters
        )
        await projector.on_partitions_assigned(tps)
        await projector.run(until=end)
        return projector
