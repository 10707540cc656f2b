"""Where a consumer reads: assigning partitions, seeking to offsets, the end offsets it is to
reach, whether it has reached them, and gaps: offsets the log no longer holds."""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import cast

from aiokafka import AIOKafkaConsumer, TopicPartition

from ..settings import ServiceSettings
from .clients import client_options, start_client
from .topics import partitions_of


async def assign_all(
    consumer: AIOKafkaConsumer, settings: ServiceSettings, topic: str
) -> list[TopicPartition]:
    """Assign every partition of `topic` to a group-less consumer; returns them."""
    tps = await partitions_of(settings, topic)
    consumer.assign(tps)
    return tps


async def seek(consumer: AIOKafkaConsumer, positions: Mapping[TopicPartition, int | None]) -> None:
    """Move each partition to its offset, or to its beginning where it has none.

    Explicit offsets: `seek_to_beginning` races with a consumer's own `auto_offset_reset`.
    """
    missing = [tp for tp, offset in positions.items() if offset is None]
    begin = await consumer.beginning_offsets(missing) if missing else {}
    for tp, offset in positions.items():
        consumer.seek(tp, begin[tp] if offset is None else offset)


def known_positions(
    consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """The offset the consumer reads next, for each of `tps` it has one for: past the records it
    handed out, and past the offsets after them that hold none for it (transaction markers,
    aborted records). aiokafka's `position()` waits, without end, on a partition not sought yet,
    and offers no way that does not: its subscription state is read instead."""
    subscription = consumer._subscription.subscription
    assignment = None if subscription is None else subscription.assignment
    if assignment is None:
        return {}
    states = {tp: assignment.state_value(tp) for tp in tps if tp in assignment.tps}
    return {tp: state.position for tp, state in states.items() if state.has_valid_position}


@dataclass(frozen=True)
class Gap:
    """A stored position outside its partition's log, so records were never applied: before the
    log start, the records from `position` up to `log_start` were deleted (retention,
    `delete_records`) before they were applied; past the log's end (`log_end`), the topic was
    created again or its log truncated, and what it holds now, from `log_start`, never was."""

    tp: TopicPartition
    position: int
    log_start: int
    log_end: int | None = None  # set when the position is past it

    @property
    def missing(self) -> int:
        """The offsets between the position and the log."""
        if self.log_end is not None:
            return self.position - self.log_end
        return self.log_start - self.position

    def describe(self) -> str:
        where = f"{self.tp.topic}[{self.tp.partition}]"
        if self.log_end is not None:
            return (
                f"{where}: stored position {self.position} is past the log's end"
                f" ({self.log_end}): the topic was created again or its log truncated; its"
                f" records from offset {self.log_start} were never applied"
            )
        return (
            f"{where}: offsets {self.position} to {self.log_start - 1} deleted before they were"
            f" applied ({self.missing} records)"
        )

    def as_dict(self) -> dict[str, str | int]:
        found: dict[str, str | int] = {
            "topic": self.tp.topic,
            "partition": self.tp.partition,
            "position": self.position,
            "log_start": self.log_start,
            "missing": self.missing,
        }
        if self.log_end is not None:
            found["log_end"] = self.log_end
        return found


class GapError(RuntimeError):
    """A job met a gap: it cannot go on without losing the records deleted."""

    def __init__(self, gaps: list[Gap]) -> None:
        super().__init__("; ".join(gap.describe() for gap in gaps))
        self.gaps = gaps


async def gaps(
    consumer: AIOKafkaConsumer, positions: Mapping[TopicPartition, int | None]
) -> dict[TopicPartition, Gap]:
    """The partitions whose position is outside their log: before its start, or past its end.
    Only that is a gap: offsets missing inside the log (compaction, transaction markers) are
    normal, and a partition without a position (nothing applied from it yet) starts at its
    beginning, wherever that is."""
    known = {tp: offset for tp, offset in positions.items() if offset is not None}
    if not known:
        return {}
    starts = await consumer.beginning_offsets(list(known))
    ends = await consumer.end_offsets(list(known))
    found: dict[TopicPartition, Gap] = {}
    for tp, offset in known.items():
        if offset < starts[tp]:
            found[tp] = Gap(tp, offset, starts[tp])
        elif offset > ends[tp]:
            found[tp] = Gap(tp, offset, starts[tp], ends[tp])
    return found


async def reached(consumer: AIOKafkaConsumer, end: Mapping[TopicPartition, int]) -> bool:
    """Whether the consumer is at or past `end` everywhere.

    Its position, not the last record's offset + 1: that also steps over transaction markers and
    records that retention has already removed.
    """
    for tp, offset in end.items():
        if await consumer.position(tp) < offset:
            return False
    return True


async def end_offsets(
    settings: ServiceSettings, tps: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """Where each partition ends now, read by a consumer of its own."""
    consumer = AIOKafkaConsumer(**client_options(settings))
    await start_client(consumer, settings)
    try:
        return cast(dict[TopicPartition, int], await consumer.end_offsets(tps))
    finally:
        await consumer.stop()
