"""Trace context (W3C `traceparent`) carried in Kafka headers, through the OpenTelemetry API.

A command handled carries its trace into the Fact Events and reply it publishes; an HTTP request
carries its trace into the commands it sends. Without the `otel` extra configured nothing is
recorded, but an incoming `traceparent` still flows through unchanged, so traces that start
elsewhere stay whole. With it installed and OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) set, spans are exported by the OpenTelemetry SDK, configured
by the standard OTEL_* variables.
"""

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

HEADERS = ("traceparent", "tracestate")


def context_of(headers: Iterable[tuple[str, bytes | None]]) -> Context | None:
    """The trace context that Kafka or HTTP headers carry, if any (a null header carries none)."""
    carrier = {
        key: value.decode("latin-1")
        for key, value in headers
        if key in HEADERS and value is not None
    }
    return propagate.extract(carrier) if carrier else None


@contextmanager
def consuming(name: str, headers: Sequence[tuple[str, bytes | None]]) -> Iterator[None]:
    """A consumer span for one record, continuing the trace its headers carry (or a new one)."""
    parent = context_of(headers) or Context()
    with tracer.start_as_current_span(name, context=parent, kind=SpanKind.CONSUMER):
        yield


def headers() -> list[tuple[str, bytes]]:
    """The current trace context as Kafka headers (none outside a trace)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(key, value.encode()) for key, value in carrier.items() if key in HEADERS]


def trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def configure(service_name: str) -> bool:
    """Export spans if the `otel` extra is installed and an OTLP endpoint is configured."""
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} & set(
        os.environ
    )
    if not endpoint or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("%s is set, but the otel extra is not installed: no spans", min(endpoint))
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True
