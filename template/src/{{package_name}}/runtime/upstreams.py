"""The upstream services this service composes, each declared once in user code.

An `Upstream` is named as on its topics: `<company>.<namespace>.<name>.events` carries its Fact
Events and `<company>.<namespace>.<name>.commands` takes its commands. A contract says whose it is
with `UPSTREAM = ...` (`THIS_SERVICE` for the service's own commands and Fact Events); a contract
that says nothing belongs to the upstream the service was generated with. What the service
consumes, checks at start-up, creates for local work and documents in /asyncapi.json follows from
the contracts its projections and commands use.
UPSTREAM_PREFIXES moves an upstream's topics in one environment (`orders=acme.staging.orders`).
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .deprecation import deprecated
from .settings import COMPANY, NAMESPACE, SERVICE_NAME, UPSTREAM_SERVICE, ServiceSettings

_NAME = re.compile(r"^[a-z][a-z0-9]*$")


@dataclass(frozen=True)
class Upstream:
    """An upstream service: its name, its domain (`<company>.<namespace>`) if not ours, and the
    CloudEvent `source` it publishes with if not its name (replies from any other are refused)."""

    name: str
    domain: str = f"{COMPANY}.{NAMESPACE}"
    source: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"Upstream({self.name!r}): a name is lowercase letters and digits, as on its topics"
            )

    def prefix(self, settings: ServiceSettings) -> str:
        return settings.upstream_prefixes.get(self.name) or f"{self.domain}.{self.name}"

    def events_topic(self, settings: ServiceSettings) -> str:
        return f"{self.prefix(settings)}.events"

    def event_source(self, settings: ServiceSettings) -> str:
        """The CloudEvent `source` of what it publishes: its events and its replies."""
        return self.source or self.name

    def commands_topic(self, settings: ServiceSettings) -> str:
        if self == GENERATED_WITH and "upstream_commands_topic" in settings.model_fields_set:
            deprecated("UPSTREAM_COMMANDS_TOPIC", f"UPSTREAM_PREFIXES={self.name}=<prefix>")
            return settings.upstream_commands_topic
        return f"{self.prefix(settings)}.commands"


@dataclass(frozen=True)
class _ThisService(Upstream):
    """This service as the owner of its own contracts: its topics are those its settings name."""

    def events_topic(self, settings: ServiceSettings) -> str:
        return settings.events_topic

    def commands_topic(self, settings: ServiceSettings) -> str:
        return settings.commands_topic

    def event_source(self, settings: ServiceSettings) -> str:
        return settings.service_name


# The owner of this service's own commands and Fact Events: `UPSTREAM = THIS_SERVICE` sends such a
# command to this service's `.commands` topic, and projects such events from its `.events` topic.
THIS_SERVICE: Upstream = _ThisService(SERVICE_NAME)

# Where a contract that names no upstream comes from: the one the service was generated with.
GENERATED_WITH = Upstream(UPSTREAM_SERVICE)


def upstream_of(contract: Any) -> Upstream:
    """The upstream that publishes (or accepts) `contract`."""
    declared = getattr(contract, "UPSTREAM", None)
    return declared if isinstance(declared, Upstream) else GENERATED_WITH


def events_topics(settings: ServiceSettings, contracts: Iterable[Any]) -> list[str]:
    """The upstream topics to consume for `contracts`: UPSTREAM_TOPICS where an environment sets
    it, else the events topic of each contract's upstream."""
    if settings.upstream_topics:
        return list(settings.upstream_topics)
    return sorted({upstream_of(contract).events_topic(settings) for contract in contracts})
