"""`GET /metrics` in the Prometheus text format: the service's instruments (instruments.py), plus
gauges read from the running service at scrape time."""

from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..service import Service

router = APIRouter(tags=["health"])


class ServiceCollector(Collector):
    def __init__(self, service: Service) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        service = self._service
        progress = service.bootstrap
        bootstrap = GaugeMetricFamily(
            "bff_bootstrap_records", "Snapshot records loaded at first start", labels=["of"]
        )
        bootstrap.add_metric(["done"], progress.done)
        bootstrap.add_metric(["total"], progress.total)
        yield bootstrap
        yield GaugeMetricFamily(
            "bff_bootstrap_finished", "1 once the bootstrap is done", int(progress.finished)
        )
        yield GaugeMetricFamily(
            "bff_consistency_waiting",
            "Queries waiting on a Consistency-Token now (at most CONSISTENCY_MAX_WAITING)",
            service.commands.waiting.now,
        )
        rebuild = GaugeMetricFamily(
            "bff_rebuild_records", "Records replayed by a running rebuild", labels=["of"]
        )
        for of, records in service.rebuild.items():
            rebuild.add_metric([of], records)
        yield rebuild
        parked = service.parked
        yield GaugeMetricFamily(
            "bff_parked_entities", "Entities whose events are parked", parked.entities
        )
        yield GaugeMetricFamily(
            "bff_parked_events", "Events waiting in parked sequences", parked.events
        )
        yield GaugeMetricFamily(
            "bff_parked_oldest_seconds",
            "How long the longest waiting parked sequence has waited (0: none)",
            parked.oldest_s,
        )
        yield CounterMetricFamily(
            "bff_read_model_recoveries",
            "Times the read model was bootstrapped again: found gone from Redis, or recovering"
            " from a snapshot to close a gap",
            service.recoveries,
        )
        yield GaugeMetricFamily(
            "bff_read_model_unreadable",
            "1 while the live read model is in a layout newer than this release reads",
            int(service.unreadable is not None),
        )
        yield GaugeMetricFamily(
            "bff_read_model_buckets",
            "Buckets per collection of the live read model version (doubled as it grows)",
            service.readmodel.keys.bucket_count,
        )
        restarts = CounterMetricFamily(
            "bff_loop_restarts", "Times a loop raised and was restarted", labels=["loop"]
        )
        for loop, count in service.loops.restarts.items():
            restarts.add_metric([loop], count)
        yield restarts
        if service.projector is not None:
            freshness = service.freshness
            yield GaugeMetricFamily(
                "bff_projector_stalled",
                "1 while records wait and no batch has committed for STALL_AFTER_S",
                int(freshness.stalled is not None),
            )
            yield GaugeMetricFamily(
                "bff_read_model_age_seconds",
                "How long ago the read model last had nothing left to apply (0: current)",
                freshness.age_s(),
            )
            lag = GaugeMetricFamily(
                "bff_consumer_lag", "Records behind, per partition", labels=["partition"]
            )
            for partition, behind in service.projector.lag().items():
                if behind is not None:
                    lag.add_metric([partition], behind)
            yield lag
            missing = GaugeMetricFamily(
                "bff_gap_missing_records",
                "Records deleted before they were applied, per partition stopped on a gap",
                labels=["partition"],
            )
            for gap in service.projector.gaps.values():
                missing.add_metric([f"{gap.tp.topic}[{gap.tp.partition}]"], gap.missing)
            yield missing


def registry_for(service: Service) -> CollectorRegistry:
    registry = service.instruments.registry
    registry.register(ServiceCollector(service))
    return registry


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
