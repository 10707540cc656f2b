"""Records the Kafka client itself cannot parse: where they are, so they are dead-lettered by their
position and the partition moves on.

aiokafka parses a fetched record batch record by record inside `getmany()`. A record it cannot parse
(a header name that is not UTF-8, say) raises from there, naming neither partition nor offset, and
whatever `getmany()` had gathered from other partitions by then is lost. Every later fetch of the
partition raises again, and nothing after that record in its batch can be read: a batch is parsed
from its start. `locate()` finds, in the error's traceback, the partition, the offset of the record
that failed and the end of its batch; the loop then reads again from its own positions, takes what
comes before that record, dead-letters each position from it to the end of the batch with the
reason (`UnreadableRecord`: no key, value or headers, none could be read), and seeks past them.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from aiokafka import AIOKafkaConsumer, TopicPartition

from .records import Record


class UnreadableRecordError(Exception):
    """The Kafka client could not parse the record at this position."""


@dataclass(slots=True)
class UnreadableRecord:
    """A position the client could not read: a Record with nothing but where it is and why."""

    topic: str
    partition: int
    offset: int
    error: UnreadableRecordError
    key: bytes | None = None
    value: bytes | None = None
    headers: Sequence[tuple[str, bytes | None]] = ()


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Where the client failed: at `offset` of `tp`, in a record batch that ends before `end`."""

    tp: TopicPartition
    offset: int
    end: int
    error: BaseException

    def records(self, start: int) -> list[UnreadableRecord]:
        """A stand-in for each position from `start` (or the failed record) to the batch's end."""
        cause = f"{type(self.error).__name__}: {self.error}"
        return [
            UnreadableRecord(
                self.tp.topic,
                self.tp.partition,
                offset,
                UnreadableRecordError(
                    f"the Kafka client cannot parse this record: {cause}"
                    if offset == self.offset
                    else f"its record batch cannot be read past offset {self.offset}: {cause}"
                ),
            )
            for offset in range(max(start, self.offset), self.end)
        ]


def locate(error: BaseException) -> Unreadable | None:
    """Where in a fetched partition aiokafka failed to parse a record, when `error` is that."""
    traceback: TracebackType | None = error.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        if (
            frame.f_code.co_name == "_unpack_records"
            and frame.f_globals.get("__name__") == "aiokafka.consumer.fetcher"
        ):
            found = frame.f_locals
            tp, batch, last = found.get("tp"), found.get("next_batch"), found.get("record")
            if tp is None or batch is None:
                return None
            # The record after the last one parsed of this batch (offsets are consecutive in a
            # batch but for compaction, which leaves none to read in between).
            offset = batch.base_offset
            if last is not None and last.offset >= batch.base_offset:
                offset = last.offset + 1
            return Unreadable(tp, offset, batch.next_offset, error)
        traceback = traceback.tb_next
    return None


async def readable_before(
    consumer: AIOKafkaConsumer, where: Unreadable, *, timeout_ms: int
) -> tuple[list[Record], int] | None:
    """The records of `where.tp` from the consumer's position up to the one that cannot be read,
    one at a time (the client parses no further than it returns), and the position after them;
    None if the partition is no longer assigned."""
    tp = where.tp
    records: list[Record] = []
    while tp in consumer.assignment():
        position: int = await consumer.position(tp)
        if position >= where.offset:
            return records, position
        try:
            fetched = await consumer.getmany(tp, timeout_ms=timeout_ms, max_records=1)
        except Exception as exc:
            if locate(exc) is None:
                raise
            return records, position  # it came sooner than thought: none is left before it
        records += fetched.get(tp, [])
    return None
