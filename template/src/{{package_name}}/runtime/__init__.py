"""Template-owned machinery: Kafka and Redis plumbing, the projector, health and readiness.

`copier update` keeps this package current; your code lives in `contracts/`, `projections/`,
`api/`, `handlers/` and `settings.py`, which the template only creates once. Your code imports the
machinery from here, never from its modules: the names below are the template's promise across
updates. A name it replaces keeps working for one more release, with a TemplateDeprecationWarning.
"""

from .commands import CommandStatus, OutgoingCommand, SentCommand, command
from .deprecation import TemplateDeprecationWarning
from .deps import (
    CommandsDep,
    QueriesDep,
    ServiceDep,
    SettingsDep,
    queries_of,
    settings_dependency,
)
from .handling import (
    Command,
    CommandHandler,
    CommandRejected,
    FactEvent,
    HandlerContext,
    Handlers,
    Outcome,
)
from .projection import (
    Collection,
    Contract,
    Event,
    Projection,
    Registry,
    Upcaster,
    project,
    type_of,
    upcast,
)
from .readmodel import CURSOR_PATTERN, InvalidCursorError, Queries
from .settings import ServiceSettings
from .upstreams import Upstream

__all__ = [
    "CURSOR_PATTERN",
    "Collection",
    "Command",
    "CommandHandler",
    "CommandRejected",
    "CommandStatus",
    "CommandsDep",
    "Contract",
    "Event",
    "FactEvent",
    "HandlerContext",
    "Handlers",
    "InvalidCursorError",
    "Outcome",
    "OutgoingCommand",
    "Projection",
    "Queries",
    "QueriesDep",
    "Registry",
    "SentCommand",
    "ServiceDep",
    "ServiceSettings",
    "SettingsDep",
    "TemplateDeprecationWarning",
    "Upcaster",
    "Upstream",
    "command",
    "project",
    "queries_of",
    "settings_dependency",
    "type_of",
    "upcast",
]
