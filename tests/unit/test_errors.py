"""One error tree, one exit-code table: codes are unique, no bare errors (docs/reference/exit-codes.md is generated
from the table: tests/unit/test_docs.py)."""

from __future__ import annotations

import ast
from pathlib import Path

from envlock import errors
from envlock.errors import EXIT_CODES, EnvlockError

ROOT = Path(__file__).resolve().parents[2]


def _subclasses(cls: type[EnvlockError]) -> list[type[EnvlockError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_every_error_class_has_a_code_of_the_table_and_no_two_meanings_share_one() -> None:
    by_code: dict[int, set[str]] = {}
    for cls in _subclasses(EnvlockError):
        assert cls.exit_code in EXIT_CODES, f"{cls.__name__} exits {cls.exit_code}, which the table does not know"
        family = next(c for c in cls.__mro__ if c.__bases__ == (EnvlockError,))  # a family shares its root's code
        by_code.setdefault(cls.exit_code, set()).add(family.__name__)
    shared = {code: names for code, names in by_code.items() if len(names) > 1}
    # NVML missing and NVML broken are one meaning (the host probe), told apart by message.
    assert shared == {14: {"NvmlUnavailableError", "HostProbeError"}}
    assert errors.USAGE == 2 and errors.ENVLOCK_FAILED == 125 and errors.INTERRUPTED == 130


def test_the_source_raises_only_classified_errors() -> None:
    bare = []
    for path in (ROOT / "src" / "envlock").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                if isinstance(func, ast.Name) and func.id == "EnvlockError":
                    bare.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert bare == [], "raise a subclass with its own exit code, not EnvlockError itself"
