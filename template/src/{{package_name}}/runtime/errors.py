"""Errors that stop the service with a message for the operator rather than a traceback."""


class StartupError(RuntimeError):
    """A dependency is unusable at start-up; the message names the setting to check."""
