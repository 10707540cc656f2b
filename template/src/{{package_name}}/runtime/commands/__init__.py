"""Commands, sent and received.

- `sending`: commands this service sends (`CommandBus`), their status and replies.
- `handling`: commands this service receives (`CommandWorker`, the handler registry), with the
  Fact Events and replies a handler's outcome publishes.
- `http`: the `/commands/{command_id}` route and the answers of a route that sends a command.

Until the next release, the names of the former module `runtime/commands.py` still import from
here, each warning once (TemplateDeprecationWarning): import them from `..runtime` instead.
"""

from typing import TYPE_CHECKING, Any

from ..deprecation import deprecated

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ hands them over, warning once
    from .sending import (
        REPLY_TYPE,
        CommandBus,
        CommandStatus,
        OutgoingCommand,
        Reply,
        SentCommand,
        command,
    )

__all__ = [
    "REPLY_TYPE",
    "CommandBus",
    "CommandStatus",
    "OutgoingCommand",
    "Reply",
    "SentCommand",
    "command",
]

_PUBLIC = {"CommandStatus", "OutgoingCommand", "SentCommand", "command"}  # in runtime's __all__


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    home = "runtime" if name in _PUBLIC else "runtime.commands.sending"
    deprecated(f"runtime.commands.{name}", f"{home}.{name}")
    from . import sending

    return getattr(sending, name)
