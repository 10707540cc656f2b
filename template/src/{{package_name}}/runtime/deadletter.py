"""The dead-letter topic: what the service could not process, with the reason, never dropped.

A dead letter keeps the original key, value and headers and adds `dlq.*` headers naming where it
came from and why it failed. Publishing is at-least-once: a crash between publishing and committing
the batch publishes the same dead letter again, recognisable by its source topic, partition and
offset. Every component (projector, command worker, reply consumer) dead-letters through one
DeadLetters, which logs each letter once, at WARNING, with the same reason its headers carry, and
counts it. What a handler raises is tried again first, as Retry says.
"""

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from .kafka import Record
from .observability.instruments import Instruments
from .settings import ServiceSettings

log = logging.getLogger(__name__)

HEADER_PREFIX = "dlq."


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: Record
    error: BaseException
    attempts: int = 1

    def reason(self) -> dict[str, str]:
        """Where the record came from and why it failed; a redriven letter keeps its first
        source and adds up its attempts."""
        record = self.record
        before = reason_of(record)
        return {
            "topic": before.get("topic", record.topic),
            "partition": before.get("partition", str(record.partition)),
            "offset": before.get("offset", str(record.offset)),
            "error.class": type(self.error).__name__,
            "error.message": str(self.error)[:2000],
            "attempts": str(int(before.get("attempts", "0")) + self.attempts),
            "time": datetime.now(UTC).isoformat(),
        }

    def headers(self, reason: dict[str, str]) -> list[tuple[str, bytes]]:
        """The record's own headers plus the reason."""
        headers = self.record.headers
        own = [(name, value) for name, value in headers if not name.startswith(HEADER_PREFIX)]
        return own + [(HEADER_PREFIX + name, value.encode()) for name, value in reason.items()]


def reason_of(record: Record) -> dict[str, str]:
    """The `dlq.*` headers of a dead letter, without the prefix."""
    return {
        name.removeprefix(HEADER_PREFIX): value.decode(errors="replace")
        for name, value in record.headers
        if name.startswith(HEADER_PREFIX)
    }


class DeadLetters:
    """Sends dead letters to `topic`. A replay's (a rebuild's) sends nothing: what it dead-letters
    was sent when first consumed."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        instruments: Instruments | None = None,
        *,
        replay: bool = False,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._counter = (instruments or Instruments()).dead_letters
        self._replay = replay

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        """Publish the letters, wait until the broker has every one of them, then log and count
        each."""
        if not letters or self._replay:
            return
        reasons = [letter.reason() for letter in letters]
        sent = [
            await self._producer.send(
                self._topic,
                value=letter.record.value,
                key=letter.record.key,
                headers=letter.headers(reason),
            )
            for letter, reason in zip(letters, reasons, strict=True)
        ]
        await asyncio.gather(*sent)
        for reason in reasons:
            fields = {
                "source_topic": reason["topic"],
                "source_partition": reason["partition"],
                "source_offset": reason["offset"],
                "error_class": reason["error.class"],
                "error_message": reason["error.message"],
                "attempts": reason["attempts"],
            }
            # The fields are also attributes of the log record: JSON lines can be filtered on them.
            log.warning(
                "dead-lettered %(source_topic)s[%(source_partition)s]@%(source_offset)s:"
                " %(error_class)s: %(error_message)s (attempts: %(attempts)s)",
                fields,
                extra=fields,
            )
        for letter in letters:
            self._counter.labels(letter.record.topic, type(letter.error).__name__).inc()


@dataclass(frozen=True)
class Retry:
    """How a handler that raises is tried again before what it handles is dead-lettered:
    `attempts` tries in all, waiting `backoff_s` before the second, twice as long before each
    further one."""

    attempts: int = 3
    backoff_s: float = 0.05

    @classmethod
    def of(cls, settings: ServiceSettings) -> "Retry":
        return cls(settings.handler_attempts, settings.retry_backoff_s)

    async def wait(self, attempt: int) -> None:
        """Wait before the try after failed `attempt` (which was not the last)."""
        await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
