"""Resolution: the pinned files one target installs, and the Resolver protocol that produces them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import unquote, urlsplit

from envlock.lock.credentials import url_secrets
from envlock.lock.targets import Target


def utc_seconds(moment: datetime) -> datetime:
    """A timestamp in UTC, truncated to whole seconds: the precision every index agrees on."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def filename_from_url(url: str) -> str:
    """The file name at the end of a URL, without query or fragment."""
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


@dataclass(frozen=True)
class LockedFile:
    """One distribution file: the exact bytes (by sha256) a build may install."""

    name: str
    url: str
    sha256: str
    size: int | None = None
    upload_time: datetime | None = None


@dataclass(frozen=True)
class LockedPackage:
    """One pinned package for one target: its wheels the target accepts, and its sdist."""

    name: str
    version: str
    wheels: tuple[LockedFile, ...] = ()
    sdist: LockedFile | None = None

    @property
    def files(self) -> tuple[LockedFile, ...]:
        """Every file of the package, wheels first."""
        return self.wheels + ((self.sdist,) if self.sdist else ())


@dataclass(frozen=True)
class ResolveRequest:
    """What to resolve, for which target, against which indexes, preferring which earlier pins."""

    requirements: tuple[str, ...]
    target: Target
    index_url: str
    extra_index_urls: tuple[str, ...] = ()
    preferences: tuple[LockedPackage, ...] = ()
    upgrade: bool = False
    upgrade_packages: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()  # exact pins that bound versions without adding packages

    @property
    def index_urls(self) -> list[str]:
        """The indexes in priority order (credentials included: for use, never for storage)."""
        return [self.index_url, *self.extra_index_urls]

    @property
    def secrets(self) -> dict[str, str]:
        """The credentials in the index URLs, for `mask` (a token expanded into a path is masked by the caller,
        which knows the ${VAR}s: see `credentials.masking`)."""
        return url_secrets(self.index_urls)

    def compile_flags(self, indexes: bool = True) -> list[str]:
        """Index and upgrade flags, spelled alike by `uv pip compile` and `pip-compile` (no indexes: they are
        passed in the environment instead)."""
        flags = ["--index-url", self.index_url] if indexes else []
        for url in self.extra_index_urls if indexes else ():
            flags += ["--extra-index-url", url]
        if self.upgrade:
            flags.append("--upgrade")
        for package in self.upgrade_packages:
            flags += ["--upgrade-package", package]
        return flags


class Resolver(Protocol):
    """Turns requirements into pinned packages with per-file hashes for one target."""

    name: str

    def version(self) -> str:
        """The resolver's own version, recorded in the lock's meta."""
        ...

    def resolve(self, request: ResolveRequest) -> list[LockedPackage]:
        """Pinned packages for request.target, sorted by name."""
        ...
