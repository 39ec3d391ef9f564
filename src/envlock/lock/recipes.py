"""Base recipes (base-images/*.toml) and how a base is named: a recipe or an image pinned by digest."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    pass


from envlock.paths import recipes_dir
from envlock.report import Report, silent

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
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    source_date_epoch: int = 1700000000
    system_packages: tuple[str, ...] = ()

    def including(self, system_packages: tuple[str, ...]) -> Recipe:
        """This recipe with the project's own Debian packages added."""
        return replace(self, system_packages=tuple(sorted(system_packages)))

    @property
    def key(self) -> str:
        """Names the base's inputs: the recipe file and the project's system packages."""
        blob = json.dumps([self.sha256, self.system_packages]).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


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
        suite=str(table["suite"]),
        mirror=str(table["mirror"]),
        source_date_epoch=int(table["source-date-epoch"]),
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


class BuiltView(Protocol):
    """What the lock pins of a base built from a recipe: its layer digest and Debian packages."""

    @property
    def diff_id(self) -> str: ...
    @property
    def packages(self) -> dict[str, str]: ...


class BaseStoreView(Protocol):
    """The base store as `envlock lock` sees it (the real one lives in envlock.image.bases)."""

    def available(self) -> bool:
        """Whether bases can be built on this machine (mmdebstrap installed)."""
        ...

    def builds_for(self, platform: str) -> bool:
        """Whether this machine can build `platform`'s base (natively or under emulation)."""
        ...

    def get(self, recipe: Recipe, platform: str) -> BuiltView | None:
        """The built base, or None."""
        ...

    def ensure(self, recipe: Recipe, platform: str, rebuild: bool = False, report: Report = silent) -> BuiltView:
        """The built base, built now when missing (or waited for, when another process is building it)."""
        ...


class UpstreamView(Protocol):
    """What the lock pins of an upstream base image (the real one is envlock.image.bases.UpstreamBase)."""

    @property
    def image_id(self) -> str: ...
    @property
    def architecture(self) -> str: ...
    @property
    def env(self) -> dict[str, str]: ...
    @property
    def packages(self) -> dict[str, str]: ...
    @property
    def python_homes(self) -> dict[str, str]: ...
