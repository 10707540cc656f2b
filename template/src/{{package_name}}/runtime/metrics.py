"""`GET /metrics` in the Prometheus text format, read from the running service at scrape time.

A registry per app (no process-wide default registry), so several apps in one process, as in
tests, never collide.
"""

from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .service import Service

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
            "bff_bootstrap_finished",
            "1 once the first-start bootstrap is done",
            int(progress.finished),
        )
        yield CounterMetricFamily(
            "bff_read_model_recoveries",
            "Times the read model was found gone from Redis and bootstrapped again",
            service.recoveries,
        )
        projector = service.projector
        if projector is not None:
            yield CounterMetricFamily("bff_events_applied", "Events applied", projector.applied)
            yield CounterMetricFamily(
                "bff_dead_letters", "Events sent to the dead-letter topic", projector.dead_lettered
            )
            lag = GaugeMetricFamily(
                "bff_consumer_lag", "Records behind, per partition", labels=["partition"]
            )
            for partition, behind in projector.lag().items():
                if behind is not None:
                    lag.add_metric([partition], behind)
            yield lag
        replies = CounterMetricFamily(
            "bff_command_replies", "Replies by outcome", labels=["outcome"]
        )
        for outcome, count in service.commands.replies.items():
            replies.add_metric([outcome], count)
        yield replies


def registry_for(service: Service) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(service))
    return registry


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
