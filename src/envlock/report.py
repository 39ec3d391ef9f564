"""How the core tells the CLI what it is doing: callbacks, never prints."""

from __future__ import annotations

from collections.abc import Callable

# One line of progress ("resolving …", "making layer torch").
Report = Callable[[str], None]
# Bytes of a named transfer: (name, done, total or None).
Progress = Callable[[str, int, int | None], None]


def silent(_message: str) -> None:
    """A Report that says nothing."""
    return


def no_progress(_name: str, _done: int, _total: int | None) -> None:
    """A Progress that shows nothing."""
    return
