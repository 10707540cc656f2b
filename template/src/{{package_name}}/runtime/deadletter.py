"""The dead-letter topic: what the service could not process, with the reason, never dropped.

A dead letter keeps the original key, value and headers and adds `dlq.*` headers naming where it
came from and why it failed. One whose copy would not fit in a request keeps what fits, and records
the original's size and digest (`fitted`); the original stays on its topic at the recorded position.
A record the Kafka client could not parse is known by its position alone: its letter has no copy.
Publishing is at-least-once: a crash between publishing and committing the batch publishes the
same dead letter again, recognisable by its source topic, partition and offset. Every component
(projector, command worker, reply consumer) dead-letters through one DeadLetters, which logs each
letter once, at WARNING, with the same reason its headers carry, and counts it. What a handler
raises is tried again first, as Retry says.
"""

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from .kafka.records import Record
from .observability.instruments import Instruments
from .settings import ServiceSettings

log = logging.getLogger(__name__)

HEADER_PREFIX = "dlq."


Letter = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]  # key, value, headers
_ALL_CUT = "key,headers,value"
_VARINTS = 10  # at most, the two length varints of a part of a record


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

    def headers(self, reason: dict[str, str]) -> list[tuple[str, bytes | None]]:
        """The record's own headers plus the reason."""
        return self._own() + _prefixed(reason)

    def _own(self) -> list[tuple[str, bytes | None]]:
        headers = self.record.headers
        return [(name, value) for name, value in headers if not name.startswith(HEADER_PREFIX)]

    def fitted(self, reason: dict[str, str], limit: int) -> Letter:
        """The letter's key, value and headers, in `limit` bytes as the producer counts a record.
        When the whole copy does not fit, what fits of its key, its own headers and its value, in
        that order, with the size of the original (key, value and headers), the SHA-256 of its
        value, and what was cut (`truncated`) added to the reason."""
        record = self.record
        key, value, own = record.key, record.value, self._own()
        if _size(key, value, own + _prefixed(reason)) <= limit:
            return key, value, own + _prefixed(reason)
        original = _size_of(key) + _size_of(value)
        original += sum(len(name.encode()) + _size_of(header) for name, header in own)
        extra = {
            "original.size": str(original),
            "original.sha256": hashlib.sha256(value or b"").hexdigest(),
        }
        room = limit - _size(None, None, _prefixed({**reason, **extra, "truncated": _ALL_CUT}))
        cut: list[str] = []
        if key is not None and _size_of(key) + _VARINTS > room:
            key = None
            cut.append("key")
        room -= _size_of(key) + _VARINTS
        kept: list[tuple[str, bytes | None]] = []
        for name, header in own:
            size = len(name.encode()) + _size_of(header) + _VARINTS
            if size <= room:
                kept.append((name, header))
                room -= size
        if len(kept) < len(own):
            cut.append("headers")
        if value is not None and len(value) + _VARINTS > room:
            value = value[: max(0, room - _VARINTS)]
            cut.append("value")
        headers = kept + _prefixed({**reason, **extra, "truncated": ",".join(cut)})
        return key, value, headers

    def bare(self, reason: dict[str, str]) -> Letter:
        """The letter with no copy at all: where the record is and why it failed."""
        record = self.record
        own = sum(len(name.encode()) + _size_of(header) for name, header in self._own())
        extra = {
            "original.size": str(_size_of(record.key) + _size_of(record.value) + own),
            "original.sha256": hashlib.sha256(record.value or b"").hexdigest(),
            "truncated": _ALL_CUT,
        }
        return None, None, _prefixed({**reason, **extra})


def _prefixed(reason: dict[str, str]) -> list[tuple[str, bytes | None]]:
    return [(HEADER_PREFIX + name, value.encode()) for name, value in reason.items()]


def _size_of(part: bytes | None) -> int:
    return 0 if part is None else len(part)


def _size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]) -> int:
    """A record's size as the producer counts it against its max_request_size."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    return size


def reason_of(record: Record) -> dict[str, str]:
    """The `dlq.*` headers of a dead letter, without the prefix."""
    return {
        name.removeprefix(HEADER_PREFIX): (value or b"").decode(errors="replace")
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
        # What one record may be: the producer refuses a larger one (aiokafka does not make it
        # public). A broker that takes less refuses it too: then the letter goes with no copy.
        self._limit: int = getattr(producer, "_max_request_size", 1048576)
        self._topic = topic
        self._counter = (instruments or Instruments()).dead_letters
        self._replay = replay

    async def send_one(self, record: Record, error: Exception) -> None:
        await self.send([DeadLetter(record, error)])

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        """Publish the letters, wait until the broker has every one of them, then log and count
        each."""
        if not letters or self._replay:
            return
        reasons = [letter.reason() for letter in letters]
        sent = [
            await self._publish(letter.fitted(reason, self._limit))
            for letter, reason in zip(letters, reasons, strict=True)
        ]
        outcomes = await asyncio.gather(*sent, return_exceptions=True)
        for letter, reason, outcome in zip(letters, reasons, outcomes, strict=True):
            if isinstance(outcome, MessageSizeTooLargeError):  # over what the broker takes
                await (await self._publish(letter.bare(reason)))
            elif isinstance(outcome, BaseException):
                raise outcome
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

    async def _publish(self, letter: Letter) -> "asyncio.Future[object]":
        key, value, headers = letter
        if key is None and value is None:  # aiokafka sends neither a record without both
            value = b""
        sent: asyncio.Future[object] = await self._producer.send(
            self._topic, value=value, key=key, headers=headers
        )
        return sent


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
