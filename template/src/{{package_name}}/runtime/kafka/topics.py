"""Topics: which this service owns, which exist, their partitions, and creating them."""

from collections.abc import Mapping, Sequence
from contextlib import suppress

from aiokafka import TopicPartition
from aiokafka.admin import NewTopic, RecordsToDelete
from aiokafka.errors import TopicAlreadyExistsError

from ..errors import StartupError
from ..settings import ServiceSettings
from .clients import new_admin, start_client


async def partitions_of(settings: ServiceSettings, topic: str) -> list[TopicPartition]:
    """The partitions of a topic; StartupError if it does not exist."""
    admin = new_admin(settings)
    await start_client(admin, settings)
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] or not described["partitions"]:
        raise StartupError(f"topic {topic} does not exist")
    return sorted(TopicPartition(topic, p["partition"]) for p in described["partitions"])


async def missing_topics(settings: ServiceSettings, topics: list[str]) -> list[str]:
    """Those of `topics` the cluster does not have."""
    admin = new_admin(settings)
    await start_client(admin, settings)
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    return [topic for topic in topics if topic not in existing]


def own_topics(settings: ServiceSettings) -> list[str]:
    """The topics this service owns (README.md, "Topics")."""
    topics = [
        settings.events_topic,
        settings.commands_topic,
        settings.reply_topic,
        settings.dlq_topic,
        settings.data_topic,
    ]
    return [*topics, settings.results_topic] if settings.pipeline_results else topics


async def create_topics(
    settings: ServiceSettings, topics: Sequence[str], *, partitions: int, replication: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created."""
    admin = new_admin(settings)
    await start_client(admin, settings)
    try:
        existing = set(await admin.list_topics())
        missing = [topic for topic in dict.fromkeys(topics) if topic not in existing]
        if missing:
            new = [NewTopic(topic, partitions, replication) for topic in missing]
            with suppress(TopicAlreadyExistsError):  # another instance was quicker
                await admin.create_topics(new)
        return missing
    finally:
        await admin.close()


async def delete_records_before(
    settings: ServiceSettings, offsets: Mapping[TopicPartition, int]
) -> None:
    """Delete each partition's records before its offset."""
    admin = new_admin(settings)
    await start_client(admin, settings)
    try:
        await admin.delete_records(
            {tp: RecordsToDelete(offset) for tp, offset in offsets.items() if offset > 0}
        )
    finally:
        await admin.close()
