"""Keeping the service's loops going, and saying so when they are not.

A loop that raises is restarted after a growing wait. One that keeps failing on something other
than Kafka or Redis being away (a defect, not an outage) is given up after LOOP_GIVE_UP failures
in a row, and liveness fails, so the platform restarts the process: restarting it for an outage
would not help, so outages are retried for as long as they last.

The projector is watched for stalls: records waiting (lag) and no batch committed for
STALL_AFTER_S is reported once, with the reason (log line, `bff_projector_stalled`, the `stale`
section of /health/ready), and once more when it moves again. The read model's age, how long ago
it last had nothing left to apply, is in every HTTP answer (`Read-Model-Age`, seconds) and in
`bff_read_model_age_seconds`.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from .errors import without_addresses
from .projector import Projector

log = logging.getLogger(__name__)

LOOP_GIVE_UP = 5  # failures in a row, not of an outage, before liveness fails
LOOP_MAX_WAIT_S = 30.0  # the longest wait before restarting a loop
_OUTAGES = (RedisError, KafkaError, OSError, TimeoutError)


@dataclass
class Loops:
    """The state of each supervised loop: why it last failed, and whether it was given up."""

    first_wait_s: float = 0.5  # before the first restart; doubling for each further one
    failing: dict[str, str] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    given_up: dict[str, str] = field(default_factory=dict)

    async def run(
        self, name: str, loop: Callable[[], Awaitable[None]], stopping: asyncio.Event
    ) -> None:
        """Run `loop()` until it returns or `stopping` is set, restarting it when it raises."""
        defects = 0
        while not stopping.is_set():
            started = time.monotonic()
            try:
                await loop()
                return
            except Exception as exc:  # whatever stops a loop is reported, then it is retried
                reason = f"{type(exc).__name__}: {exc}"[:300]
                if time.monotonic() - started > 60:
                    defects = 0  # it ran a while: a new run of failures
                defects += 0 if isinstance(exc, _OUTAGES) else 1
                self.failing[name] = without_addresses(reason)  # what the health probes show
                self.restarts[name] = self.restarts.get(name, 0) + 1
                if defects >= LOOP_GIVE_UP:
                    self.given_up[name] = without_addresses(reason)
                    log.critical("%s failed %d times in a row, given up: %s", name, defects, reason)
                    return
                wait = min(
                    LOOP_MAX_WAIT_S, self.first_wait_s * 2 ** min(self.restarts[name] - 1, 8)
                )
                log.error("%s stopped, restarting in %.1fs", name, wait, exc_info=exc)
                with suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await stopping.wait()


@dataclass
class Freshness:
    """How current the read model is, as the projector makes progress (or does not)."""

    stall_after_s: float
    current_at: float = field(default_factory=time.monotonic)  # last time nothing was left to do
    stalled: str | None = None  # why, while stalled
    lag: int = 0
    age_header: bytes = b"0"

    def age_s(self) -> float:
        return 0.0 if self.lag == 0 else time.monotonic() - self.current_at

    def observe(self, projector: Projector) -> None:
        """Take the projector's progress in; report a stall once when it starts and when it ends."""
        now = time.monotonic()
        lags = projector.lag().values()
        self.lag = sum(n or 0 for n in lags)
        if self.lag == 0 and None not in lags:
            self.current_at = now
        self.age_header = str(int(self.age_s())).encode()
        quiet_s = now - projector.committed_at
        if self.lag and quiet_s > self.stall_after_s:
            if self.stalled is None:
                self.stalled = projector.failing or "no batch committed"
                log.warning(
                    "projector stalled: %d records waiting, no commit for %.0fs"
                    " (STALL_AFTER_S=%g): %s",
                    self.lag,
                    quiet_s,
                    self.stall_after_s,
                    self.stalled,
                )
        elif self.stalled is not None:
            log.info("projector moving again after a stall (%s)", self.stalled)
            self.stalled = None

    def report(self, projector: Projector) -> dict[str, Any]:
        return {
            "stalled": self.stalled is not None,
            "reason": self.stalled,
            "lag": self.lag,
            "last_commit_age_s": round(time.monotonic() - projector.committed_at, 1),
            "read_model_age_s": round(self.age_s(), 1),
        }

    async def watch(self, projector: Projector, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            self.observe(projector)
            with suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await stopping.wait()
