"""Errors that stop the service with a message for the operator rather than a traceback, and what
HTTP answers may show of an error."""

import re

# host:port (names, IPv4, [IPv6]) and bare IPv4 addresses, as client errors quote them.
_ADDRESS = re.compile(
    r"\[[0-9A-Fa-f:.]+\](:\d+)?|\b\d{1,3}(\.\d{1,3}){3}(:\d+)?\b|\b[A-Za-z0-9_.-]+:\d{2,5}\b"
)


class StartupError(RuntimeError):
    """A dependency is unusable at start-up; the message names the setting to check."""


def without_addresses(text: str) -> str:
    """`text` with the network addresses in it masked: what an HTTP answer (a health probe's)
    shows of an error. Logs keep them."""
    return _ADDRESS.sub("<address>", text)
