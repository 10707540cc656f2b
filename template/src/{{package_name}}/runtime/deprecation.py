"""Names user code relied on that a release replaced: they keep working for one more release and
warn once each, naming what to use instead (the changelog gives the steps)."""

import warnings

_warned: set[str] = set()


class TemplateDeprecationWarning(DeprecationWarning):
    """A name user code relies on goes away in the next release of the template."""


def deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn, once per process, that `old` is deprecated in favour of `new`."""
    if old in _warned:
        return
    _warned.add(old)
    warnings.warn(
        f"{old} is deprecated and goes in the next release: use {new}",
        TemplateDeprecationWarning,
        stacklevel=stacklevel,
    )
