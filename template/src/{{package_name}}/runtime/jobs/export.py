"""`export_snapshot`: the live read model written to the private data topic (snapshot.py)."""

from .. import snapshot
from ..settings import ServiceSettings
from .connections import clients, existing


async def export_snapshot(
    settings: ServiceSettings, topic: str, progress: snapshot.ProgressCallback | None = None
) -> snapshot.Summary:
    async with clients(settings) as c:
        readmodel = await existing(c.readmodel)
        return await snapshot.export(readmodel, c.producer, settings, topic, progress)
