"""The dead-letter topic: what the service could not process, with the reason, never dropped.

A dead letter keeps the original key, value and headers and adds `dlq.*` headers naming where it
came from and why it failed. Publishing is at-least-once: a crash between publishing and committing
the batch publishes the same dead letter again, recognisable by its source topic, partition and
offset.
"""

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from .kafka import Record

HEADER_PREFIX = "dlq."


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: Record
    error: BaseException
    attempts: int = 1

    def headers(self) -> list[tuple[str, bytes]]:
        """The record's own headers plus the reason; a redriven letter keeps its first source."""
        record = self.record
        own = [
            (name, value) for name, value in record.headers if not name.startswith(HEADER_PREFIX)
        ]
        before = reason_of(record)
        reason = {
            "topic": before.get("topic", record.topic),
            "partition": before.get("partition", str(record.partition)),
            "offset": before.get("offset", str(record.offset)),
            "error.class": type(self.error).__name__,
            "error.message": str(self.error)[:2000],
            "attempts": str(int(before.get("attempts", "0")) + self.attempts),
            "time": datetime.now(UTC).isoformat(),
        }
        return own + [(HEADER_PREFIX + name, value.encode()) for name, value in reason.items()]


def reason_of(record: Record) -> dict[str, str]:
    """The `dlq.*` headers of a dead letter, without the prefix."""
    return {
        name.removeprefix(HEADER_PREFIX): value.decode(errors="replace")
        for name, value in record.headers
        if name.startswith(HEADER_PREFIX)
    }


async def publish(producer: AIOKafkaProducer, topic: str, letters: list[DeadLetter]) -> None:
    """Send dead letters and wait until the broker has every one of them."""
    sent = [
        await producer.send(
            topic, value=letter.record.value, key=letter.record.key, headers=letter.headers()
        )
        for letter in letters
    ]
    await asyncio.gather(*sent)
