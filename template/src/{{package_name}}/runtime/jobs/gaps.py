"""`gaps list`, `gaps accept`: the partitions stopped on a gap, and an operator accepting the loss
of the records deleted (runtime/gaps.py).

Accepting moves the stored position to the partition's log start, only if it still is the one
found here (a compare-and-set), and adds an entry to the audit stream; the running service
notices within seconds and resumes the partition from there.
"""

import logging

from aiokafka import TopicPartition

from .. import gaps
from ..kafka import Gap, partitions_of
from ..kafka import gaps as gaps_at
from ..projection import Registry
from ..settings import ServiceSettings
from .connections import clients, existing

log = logging.getLogger(__name__)


class RefusedError(RuntimeError):
    """Nothing to accept, or the position moved meanwhile: the message says which."""


async def current(settings: ServiceSettings, registry: Registry) -> list[Gap]:
    """The gaps of the live read model now, on the topics it projects."""
    async with clients(settings) as c:
        readmodel = await existing(c.readmodel)
        tps = await gaps.upstream_partitions(settings, registry.topics(settings))
        stored = await readmodel.batches.positions(tps)
        return list((await gaps_at(c.consumer, stored)).values())


async def accepted(settings: ServiceSettings, *, limit: int) -> list[dict[str, str]]:
    """The gaps accepted so far, newest first (the audit stream)."""
    async with clients(settings) as c:
        return await gaps.accepted(await existing(c.readmodel), limit)


async def accept(settings: ServiceSettings, topic: str, partition: int) -> Gap:
    """Accept the loss of the records deleted before `topic[partition]`'s stored position was
    applied: move it to the log start. Raises RefusedError when there is no gap there, or it
    moved meanwhile (recovered, or accepted by someone else)."""
    async with clients(settings) as c:
        readmodel = await existing(c.readmodel)
        tp = TopicPartition(topic, partition)
        if tp not in await partitions_of(settings, topic):
            raise RefusedError(f"{topic} has no partition {partition}")
        stored = await readmodel.batches.positions([tp])
        gap = (await gaps_at(c.consumer, stored)).get(tp)
        if gap is None:
            raise RefusedError(
                f"no gap on {topic}[{partition}]: its stored position ({stored[tp]}) is inside"
                " its log"
            )
        outcome = await gaps.accept(readmodel, gap)
        if outcome != "ok":
            raise RefusedError(f"not accepted, {outcome}: the position changed meanwhile")
        log.warning("gap accepted, its records are lost for good: %s", gap.describe())
        return gap
