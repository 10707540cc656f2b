"""Gaps: what becomes of a partition whose stored position is outside its log.

The projector finds them and stops those partitions (projector.py); this module ends a gap in one
of two ways, and nothing else moves a position past records that were never applied:

- Recovery, by the service itself, when the last complete snapshot on the data topic starts every
  upstream partition inside its log (and the gapped ones past their stored positions), and no
  gap is past its log's end (a snapshot names offsets of the log as it was).
  The read model is then loaded again from it as a lost one is: every stored position is deleted
  and the version marked as waiting for its bootstrap, in one script that first checks the gapped
  positions are still those found. The load drops the entities and writes the snapshot's, with its
  positions; the projector goes on from there. Whatever the read model held is replaced, and an
  event is applied after the snapshot's positions only, so nothing is applied twice.
- Acceptance, by an operator (`gaps accept`, jobs/gaps.py): the stored position moves to the log
  start, only if it still is the one found, and an entry is added to the audit stream
  (Keyspace.gaps_accepted). The records deleted are lost for good; past the log's end, what the
  log holds now is applied from its start.

`watch` runs in the service: every GAP_POLL_S it seeks the stopped partitions to their stored
positions again (one accepted resumes), and looks for a snapshot to recover from when a gap is
found and every SNAPSHOT_CHECK_S after.
"""

import asyncio
import getpass
import logging
import socket
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any, cast

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from . import snapshot
from .errors import StartupError
from .kafka import Gap, gaps, new_job_consumer, partitions_of, start_client
from .projector import Projector
from .readmodel import ReadModel
from .settings import ServiceSettings
from .versions import ReadModelLostError

log = logging.getLogger(__name__)

GAP_POLL_S = 1.0
SNAPSHOT_CHECK_S = 30.0
FREEZE_POLL_S = 0.1
AUDIT_MAX = 10_000  # entries kept in the audit stream (about)

# Moves one position, if it is still ARGV[2], to ARGV[3], and records it in the audit stream
# (ARGV[4:] its field, value pairs). KEYS: pointer, freeze, bootstrap, position, audit stream.
_ACCEPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'moved' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'frozen' end
if redis.call('GET', KEYS[3]) == 'pending' then return 'pending' end
if redis.call('GET', KEYS[4]) ~= ARGV[2] then return 'moved' end
redis.call('SET', KEYS[4], ARGV[3])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 5))
return 'ok'
"""

# Marks the version as waiting for its bootstrap and deletes its positions, if the ARGV[2] gapped
# positions are still as found. KEYS: pointer, freeze, bootstrap, rebuilding, the gapped
# positions, then every other position to delete.
_RESTART = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'moved' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'frozen' end
if redis.call('GET', KEYS[3]) == 'pending' then return 'pending' end
if redis.call('EXISTS', KEYS[4]) == 1 then return 'rebuilding' end
for i = 1, tonumber(ARGV[2]) do
  if redis.call('GET', KEYS[4 + i]) ~= ARGV[2 + i] then return 'moved' end
end
if #KEYS > 4 then redis.call('DEL', unpack(KEYS, 5)) end
redis.call('SET', KEYS[3], 'pending')
return 'ok'
"""


class RecoveringError(ReadModelLostError):
    """The read model is being loaded again from a snapshot, to close a gap."""


async def _run(readmodel: ReadModel, script: str, keys: list[str], args: list[Any]) -> str:
    """Run a script that answers `frozen` while a snapshot export reads: until it does not."""
    while True:
        outcome = await readmodel.redis.eval(script, len(keys), *keys, *args)
        if outcome != b"frozen":
            return cast(bytes, outcome).decode()
        await asyncio.sleep(FREEZE_POLL_S)


async def accept(readmodel: ReadModel, gap: Gap, *, by: str | None = None) -> str:
    """Move the stored position of `gap` to its log start if it is still `gap.position`: `ok`;
    else `moved` (it changed meanwhile, or the version did) or `pending` (being bootstrapped)."""
    keys = readmodel.keys
    audit = {
        "topic": gap.tp.topic,
        "partition": gap.tp.partition,
        "position": gap.position,
        "log_start": gap.log_start,
        "missing": gap.missing,
        "version": keys.version,
        "by": by or _who(),
        "at": datetime.now(UTC).isoformat(),
    }
    names = [keys.pointer, keys.freeze, keys.bootstrap, keys.position(gap.tp), keys.gaps_accepted]
    args: list[Any] = [keys.version, gap.position, gap.log_start, AUDIT_MAX]
    for field, value in audit.items():
        args += (field, value)
    return await _run(readmodel, _ACCEPT, names, args)


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


async def accepted(readmodel: ReadModel, limit: int) -> list[dict[str, str]]:
    """The last `limit` gaps accepted, newest first."""
    found = await readmodel.redis.xrevrange(readmodel.keys.gaps_accepted, count=limit)
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], found)
    return [
        {"id": entry.decode(), **{k.decode(): v.decode() for k, v in fields.items()}}
        for entry, fields in entries
    ]


async def upstream_partitions(settings: ServiceSettings, topics: list[str]) -> list[TopicPartition]:
    return [tp for topic in topics for tp in await partitions_of(settings, topic)]


async def recover(
    settings: ServiceSettings, topics: list[str], readmodel: ReadModel, found: list[Gap]
) -> bool:
    """Have the read model loaded again from the last snapshot if it closes the gaps `found`
    without opening another; True when the bootstrap was restarted. A position past its log's
    end is left to an operator: a snapshot's positions name offsets of the log as it was."""
    wanted = ", ".join(f"{gap.tp.topic}[{gap.tp.partition}]" for gap in found)
    if any(gap.log_end is not None for gap in found):
        log.info("no snapshot recovers %s: a position is past its log's end", wanted)
        return False
    consumer = new_job_consumer(settings)
    await start_client(consumer, settings)
    try:
        positions = await snapshot.last_positions(consumer, settings, settings.data_topic)
        tps = await upstream_partitions(settings, topics)
        stored = await readmodel.batches.positions(tps)
        # Where each partition would start: the snapshot's position, else its beginning. That
        # is no gap where nothing was applied; where something was, it is from offset 0.
        start = {tp: (positions or {}).get(tp, None if stored[tp] is None else 0) for tp in tps}
        left = await gaps(consumer, start) if positions is not None else {}
    finally:
        await consumer.stop()
    if positions is None:
        log.info("no snapshot on %s to recover %s from", settings.data_topic, wanted)
        return False
    if left:
        log.info(
            "the last snapshot on %s cannot recover %s: %s",
            settings.data_topic,
            wanted,
            "; ".join(gap.describe() for gap in left.values()),
        )
        return False
    keys = readmodel.keys
    gapped = [keys.position(gap.tp) for gap in found]
    others = {keys.position(tp) for tp in tps}
    others |= {key.decode() async for key in readmodel.redis.scan_iter(match=keys.positions)}
    names = [keys.pointer, keys.freeze, keys.bootstrap, keys.rebuilding, *gapped]
    names += sorted(others - set(gapped))
    args = [keys.version, len(found), *(gap.position for gap in found)]
    outcome = await _run(readmodel, _RESTART, names, args)
    if outcome != "ok":
        log.info("recovering %s from the snapshot not started: %s", wanted, outcome)
        return False
    log.warning(
        "recovering %s: loading the read model again from the last snapshot on %s",
        wanted,
        settings.data_topic,
    )
    return True


async def watch(
    settings: ServiceSettings,
    topics: list[str],
    readmodel: ReadModel,
    projector: Projector,
    live: Callable[[], bool],
    stopping: asyncio.Event,
) -> None:
    """Resume the partitions whose gap was accepted, recover from a snapshot where one closes
    them, and have the projector load the read model again when it is being bootstrapped again
    (another instance recovering); `live()`: whether this instance has finished its bootstrap."""
    looked: dict[tuple[TopicPartition, int], float] = {}  # gap -> when a snapshot was looked for
    while not stopping.is_set():
        if projector.gaps:
            await projector.recheck(list(projector.gaps))
        now = time.monotonic()
        due = [
            gap
            for gap in list(projector.gaps.values())
            if now - looked.get((gap.tp, gap.position), -SNAPSHOT_CHECK_S) >= SNAPSHOT_CHECK_S
        ]
        try:
            if due and live():
                looked.update(((gap.tp, gap.position), now) for gap in due)
                if await recover(settings, topics, readmodel, due):
                    projector.lose(RecoveringError("recovering from a snapshot to close a gap"))
            elif live() and await readmodel.versions.awaits_bootstrap():
                projector.lose(ReadModelLostError("the read model is being bootstrapped again"))
        except (KafkaError, RedisError, OSError, StartupError) as exc:  # looked for again later
            log.warning("looking for a snapshot to recover from failed: %r", exc)
        with suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), GAP_POLL_S)
