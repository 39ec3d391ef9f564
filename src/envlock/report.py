"""How the core tells the CLI what it is doing: callbacks, never prints; and text from elsewhere made safe to
print (`shown`)."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

# One line of progress ("resolving …", "making layer torch").
Report = Callable[[str], None]
# Bytes of a named transfer: (name, done, total or None).
Progress = Callable[[str, int, int | None], None]


# Control characters (C0, C1, DEL), format characters (bidirectional overrides, zero-width ones), line and paragraph
# separators, surrogates, private-use and unassigned code points: what can move a terminal's cursor, retitle its
# window, rewrite a line already printed, reorder or hide what a reader sees, or fail to print at all.
_UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def shown(text: str) -> str:
    """`text` (a record's value, a file name, a key id: anything another machine wrote) as one printable line: each
    control, line break, format character or surrogate written as its escape (`\\x1b`, `\\n` as `\\x0a`,
    `\\u202e`)."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(char) if unicodedata.category(char) in _UNSAFE else char for char in text)


def shown_lines(text: str) -> str:
    """Several lines of envlock's own layout, each made safe with `shown` (the line breaks between them kept)."""
    return "\n".join(shown(line) for line in text.split("\n"))


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def silent(_message: str) -> None:
    """A Report that says nothing."""
    return


def no_progress(_name: str, _done: int, _total: int | None) -> None:
    """A Progress that shows nothing."""
    return
