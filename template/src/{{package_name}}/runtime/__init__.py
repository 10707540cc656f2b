"""Template-owned machinery: Kafka and Redis plumbing, the projector, health and readiness.

`copier update` keeps this package current; your code lives in `contracts/`, `projections/`,
`api/`, `handlers/` and `settings.py`, which the template only creates once. Your code imports the
machinery from here, never from its modules: the names below are the template's promise across
updates. A name it replaces keeps working for one more release, with a TemplateDeprecationWarning.
"""

from .auth import Principal, PrincipalDep
from .commands.handling import (
    Command,
    CommandHandler,
    CommandRejected,
    FactEvent,
    HandlerContext,
    Handlers,
    Outcome,
    fact,
    handle,
)
from .commands.http import (
    COMMAND_RESPONSES,
    Accepted,
    CommandUntil,
    CommandWait,
    command_response,
)
from .commands.sending import CommandStatus, OutgoingCommand, SentCommand, command
from .deprecation import TemplateDeprecationWarning
from .deps import (
    CommandsDep,
    QueriesDep,
    ServiceDep,
    SettingsDep,
    settings_dependency,
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
from .readmodel import CURSOR_PATTERN, InvalidCursorError, Page, Queries, StoredPage
from .settings import ServiceSettings
from .upstreams import THIS_SERVICE, Upstream

__all__ = [
    "COMMAND_RESPONSES",
    "CURSOR_PATTERN",
    "THIS_SERVICE",
    "Accepted",
    "Collection",
    "Command",
    "CommandHandler",
    "CommandRejected",
    "CommandStatus",
    "CommandUntil",
    "CommandWait",
    "CommandsDep",
    "Contract",
    "Event",
    "FactEvent",
    "HandlerContext",
    "Handlers",
    "InvalidCursorError",
    "Outcome",
    "OutgoingCommand",
    "Page",
    "Principal",
    "PrincipalDep",
    "Projection",
    "Queries",
    "QueriesDep",
    "Registry",
    "SentCommand",
    "ServiceDep",
    "ServiceSettings",
    "SettingsDep",
    "StoredPage",
    "TemplateDeprecationWarning",
    "Upcaster",
    "Upstream",
    "command",
    "command_response",
    "fact",
    "handle",
    "project",
    "settings_dependency",
    "type_of",
    "upcast",
]
