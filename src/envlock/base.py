"""Base images: envlock's own recipes (base-images/*.toml) or upstream images pinned by digest."""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

DEFAULT_BASE = "debian-bookworm"
_DIGEST_REF = re.compile(
    r"^(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*(?::\d+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?@sha256:(?P<digest>[0-9a-f]{64})$"
)


@dataclass(frozen=True)
class Recipe:
    """A base built by envlock itself from a recipe file."""

    name: str
    python: str
    glibc: tuple[int, int]
    sha256: str
    packages: tuple[str, ...]


def recipes_dir() -> Path:
    """Where the base recipes live: shipped in the wheel, or the source checkout's base-images/."""
    packaged = Path(__file__).with_name("base_images")
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "base-images"


def recipe_names() -> list[str]:
    """Names of the base recipes envlock knows."""
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))


def load_recipe(name: str) -> Recipe:
    """Read one recipe by name; its identity is the sha256 of the file's bytes."""
    path = recipes_dir() / f"{name}.toml"
    data = path.read_bytes()
    table = tomllib.loads(data.decode("utf-8"))
    major, minor = str(table["glibc"]).split(".")
    return Recipe(
        name=name,
        python=str(table["python"]),
        glibc=(int(major), int(minor)),
        sha256=hashlib.sha256(data).hexdigest(),
        packages=tuple(table.get("packages", ())),
    )


def is_image_reference(base: str) -> bool:
    """True when base names an upstream image pinned by digest (`repo[:tag]@sha256:…`)."""
    return _DIGEST_REF.match(base) is not None


def check_base(base: str) -> str | None:
    """A problem with the base's spelling, or None."""
    if base in recipe_names() or is_image_reference(base):
        return None
    if "@sha256:" not in base and ("/" in base or ":" in base):
        return (
            f"base {base!r} is a movable tag; pin it by digest (`{base}@sha256:…`) "
            f"or use one of envlock's recipes: {', '.join(recipe_names())}"
        )
    return f"unknown base {base!r}; known recipes: {', '.join(recipe_names())}, or an image `repo@sha256:…`"


class ImageInspector(Protocol):
    """Reads an image's config from the container engine."""

    def image_env(self, ref: str) -> dict[str, str]:
        """The image's ENV as a mapping."""
        ...
