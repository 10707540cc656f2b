"""Logging: one JSON object per line (LOG_FORMAT=json) or plain text, with the id, correlation id
and trace id of the event or command being handled on every line logged while handling it.

LOG_FORMAT=auto (the default) picks by where the lines go: text for a person at a terminal, JSON
for a container runtime, a pipe or a file, where a log collector reads them."""

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

from . import tracing

_event_id: ContextVar[str | None] = ContextVar("event_id", default=None)
_correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)


@contextmanager
def handling(event_id: str, correlation_id: str | None = None) -> Iterator[None]:
    """Within: log lines name this event (or command) and its correlation id."""
    tokens = _event_id.set(event_id), _correlation_id.set(correlation_id)
    try:
        yield
    finally:
        _event_id.reset(tokens[0])
        _correlation_id.reset(tokens[1])


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.event_id = _event_id.get()
        record.correlation_id = _correlation_id.get()
        record.trace_id = tracing.trace_id()
        return True


def configure(level: str, fmt: str) -> None:
    """Route every logger (uvicorn's and aiokafka's included) through one root handler on stderr,
    in `fmt`: json, text, or auto (text if stderr is a terminal, else json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Context())
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}{event_id}{correlation_id}{trace_id}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
