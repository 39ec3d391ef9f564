"""How the core tells the CLI what it is doing: callbacks, never prints; and text from elsewhere made safe to
print (`shown`)."""

from __future__ import annotations

import re
from collections.abc import Callable

# One line of progress ("resolving …", "making layer torch").
Report = Callable[[str], None]
# Bytes of a named transfer: (name, done, total or None).
Progress = Callable[[str, int, int | None], None]


# C0 and C1 controls (ESC, BEL, CR, line breaks), DEL, Unicode line separators and bidirectional overrides: what
# can move a terminal's cursor, retitle its window, rewrite a line already printed or reorder what a reader sees.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def shown(text: str) -> str:
    """`text` (a record's value, a file name, a key id: anything another machine wrote) as one printable line: each
    control, line break or bidi override written as its escape (`\\x1b`, `\\n` as `\\x0a`, `\\u202e`)."""
    return _UNSAFE.sub(lambda found: _escape(found.group()), text)


def shown_lines(text: str) -> str:
    """Several lines of envlock's own layout, each made safe with `shown` (the line breaks between them kept)."""
    return "\n".join(shown(line) for line in text.split("\n"))


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def silent(_message: str) -> None:
    """A Report that says nothing."""
    return


def no_progress(_name: str, _done: int, _total: int | None) -> None:
    """A Progress that shows nothing."""
    return
