"""The former module `runtime/handling.py`, now `runtime/commands/handling.py`: its names still
import from here until the next release, warning once (TemplateDeprecationWarning). Import them
from `..runtime` instead (`from ..runtime import Handlers`).

A package rather than a `handling.py`, so that git follows the module to its new place.
"""

from ..commands.handling import (
    Command,
    CommandHandler,
    CommandRejected,
    CommandWorker,
    FactEvent,
    HandlerContext,
    Handlers,
    Outcome,
    UndeclaredEventError,
    fact,
    handle,
)
from ..deprecation import deprecated

__all__ = [
    "Command",
    "CommandHandler",
    "CommandRejected",
    "CommandWorker",
    "FactEvent",
    "HandlerContext",
    "Handlers",
    "Outcome",
    "UndeclaredEventError",
    "fact",
    "handle",
]

deprecated("runtime.handling", "runtime (from ..runtime import Handlers, ...)")
