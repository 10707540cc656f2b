"""The Prometheus instruments the machinery updates as it works, one set per running service.

Each service gets its own registry (no process-wide default registry), so several services in one
process, as in tests, never collide. Gauges that are read from the service at scrape time (lag,
bootstrap and rebuild progress) are in metrics.py.
"""

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class Instruments:
    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=False)
    )

    def __post_init__(self) -> None:
        registry = self.registry
        self.events_applied = Counter(
            "bff_events_applied",
            "Upstream events applied to the read model",
            ["topic", "type"],
            registry=registry,
        )
        self.events_skipped = Counter(
            "bff_events_skipped",
            "Upstream events not applied to an entity, by why: duplicate (already applied),"
            " stale (older than what the entity has seen), missing (no entity, ignored on"
            " purpose), ignored (a type this service skips)",
            ["topic", "type", "reason"],
            registry=registry,
        )
        self.consistency_refused = Counter(
            "bff_consistency_waits_refused",
            "Queries with a Consistency-Token answered 503 at once: CONSISTENCY_MAX_WAITING"
            " queries of the instance were waiting already",
            registry=registry,
        )
        self.events_parked = Counter(
            "bff_events_parked",
            "Upstream events parked behind their entity's parked sequence",
            ["topic", "type"],
            registry=registry,
        )
        self.partition_conflicts = Counter(
            "bff_entity_partition_conflicts",
            "Events that reached an entity from another partition of their topic than the last",
            ["topic"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "bff_dead_letters",
            "Records sent to the dead-letter topic, by where they came from and why",
            ["topic", "error"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "bff_projector_batch_seconds",
            "Time to fold and commit one batch of events",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_events = Histogram(
            "bff_projector_batch_events",
            "Events per committed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=registry,
        )
        self.gaps_detected = Counter(
            "bff_gaps_detected",
            "Gaps found: a stored position before its partition's log start (records deleted"
            " before they were applied)",
            ["topic"],
            registry=registry,
        )
        self.commands_sent = Counter(
            "bff_commands_sent", "Commands this service sent", ["type"], registry=registry
        )
        self.command_outcomes = Counter(
            "bff_command_outcomes",
            "Outcomes of the commands this service sent: succeeded, failed, timed_out",
            ["outcome"],
            registry=registry,
        )
        self.command_replies = Counter(
            "bff_command_replies",
            "Replies received: completed, duplicate, late, unknown or forged",
            ["outcome"],
            registry=registry,
        )
        self.commands_limited = Counter(
            "bff_commands_rate_limited",
            "Commands refused with 429: their principal was over COMMANDS_PER_MINUTE",
            registry=registry,
        )
        self.commands_handled = Counter(
            "bff_commands_handled",
            "Commands this service handled: succeeded, rejected, dead_lettered, duplicate",
            ["type", "outcome"],
            registry=registry,
        )
        self.http_requests = Counter(
            "bff_http_requests",
            "HTTP requests by route template, method and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_seconds = Histogram(
            "bff_http_request_seconds",
            "HTTP request duration by route template and method",
            ["method", "route"],
            registry=registry,
        )
