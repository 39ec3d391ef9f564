"""Scans of envlock's own source, for rules that allow a thing in one module only (git commands, layout names)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

SRC = Path(__file__).resolve().parents[1] / "src" / "envlock"
T = TypeVar("T")


def found_outside(owner: str, scan: Callable[[str], list[T]]) -> dict[str, list[T]]:
    """Every module under src/envlock but `owner` (a path relative to it) in which `scan` finds something."""
    return {
        path.relative_to(SRC).as_posix(): found
        for path in sorted(SRC.rglob("*.py"))
        if path != SRC / owner and (found := scan(path.read_text(encoding="utf-8")))
    }
