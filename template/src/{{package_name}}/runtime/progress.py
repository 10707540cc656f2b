"""Progress of long work (bootstrap, rebuild): counts, rate and ETA, for logs and readiness."""

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Called as `progress(done, total)`; logs at most every `every_s` seconds."""

    what: str
    every_s: float = 5.0
    done: int = 0
    total: int = 0
    finished: bool = False
    started: float = field(default_factory=time.monotonic)
    _logged: float = 0.0

    def restart(self) -> None:
        """Start over (the work is being done again)."""
        self.done = self.total = 0
        self.finished = False
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        now = time.monotonic()
        if now - self._logged >= self.every_s or done >= total:
            self._logged = now
            log.info("%s: %s", self.what, self.describe())

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None

    def describe(self) -> str:
        eta = "?" if self.eta_s is None else f"{self.eta_s:.0f}s"
        return f"{self.done:,}/{self.total:,} records, {self.rate:,.0f}/s, ETA {eta}"

    def as_dict(self) -> dict[str, object]:
        eta = self.eta_s
        return {
            "done": self.done,
            "total": self.total,
            "rate_per_s": round(self.rate),
            "eta_s": None if eta is None else round(eta, 1),
            "finished": self.finished,
        }
