"""Where a consumer reads: assigning partitions, seeking to offsets, the end offsets it is to
reach, and whether it has reached them."""

from collections.abc import Mapping
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
