"""Files of a pinned release, from a package index's Simple API (PEP 503 HTML / PEP 691 JSON)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from packaging.tags import Tag
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

from envlock.errors import IndexUnreachableError, ResolverError
from envlock.lock.credentials import mask, redact, url_secrets
from envlock.lock.resolve import LockedFile, LockedPackage, utc_seconds
from envlock.lock.targets import Target


class FileFinder(Protocol):
    """Lists the files of pinned releases for a target."""

    def files(self, pins: list[tuple[str, str]], target: Target, index_urls: list[str]) -> list[LockedPackage]:
        """One LockedPackage per (name, version) pin, with the wheels the target accepts and the sdist."""
        ...


class SimpleIndexFinder:
    """FileFinder through pypi-simple: the first index in priority order that has the project wins."""

    def __init__(self, workers: int = 8) -> None:
        self.workers = workers

    def files(self, pins: list[tuple[str, str]], target: Target, index_urls: list[str]) -> list[LockedPackage]:
        """Look the pins up concurrently."""
        import requests  # noqa: PLC0415
        from pypi_simple import PyPISimple  # noqa: PLC0415  (0.2 s to import; only pip-tools needs it)

        tags = set(target.wheel_tags())
        clients = [PyPISimple(endpoint=url.rstrip("/") + "/", session=requests.Session()) for url in index_urls]

        def lookup(pin: tuple[str, str]) -> LockedPackage:
            return self._one(clients, index_urls, pin, tags)

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return sorted(pool.map(lookup, pins), key=lambda p: p.name)

    @staticmethod
    def _one(clients: list[Any], index_urls: list[str], pin: tuple[str, str], tags: set[Tag]) -> LockedPackage:
        import requests  # noqa: PLC0415
        from pypi_simple import NoSuchProjectError  # noqa: PLC0415

        name, version = pin
        wanted = Version(version)
        for client, url in zip(clients, index_urls, strict=True):
            try:
                page = client.get_project_page(name)
            except NoSuchProjectError:
                continue
            except requests.RequestException as exc:
                raise IndexUnreachableError(
                    f"cannot reach the package index {mask(url, url_secrets([url]))}: {exc.__class__.__name__}"
                ) from exc
            wheels: list[LockedFile] = []
            sdist: LockedFile | None = None
            for dist in page.packages:
                sha256 = (dist.digests or {}).get("sha256")
                if not sha256 or dist.is_yanked:
                    continue
                locked = LockedFile(
                    name=dist.filename,
                    url=redact(dist.url.split("#", 1)[0]),
                    sha256=sha256,
                    size=dist.size,
                    upload_time=utc_seconds(dist.upload_time) if dist.upload_time else None,
                )
                if dist.filename.endswith(".whl"):
                    try:
                        _, wheel_version, _, wheel_tags = parse_wheel_filename(dist.filename)
                    except InvalidWheelFilename:
                        continue
                    if wheel_version == wanted and wheel_tags & tags:
                        wheels.append(locked)
                elif sdist is None:
                    try:
                        _, sdist_version = parse_sdist_filename(dist.filename)
                    except InvalidSdistFilename:
                        continue
                    if sdist_version == wanted:
                        sdist = locked
            if wheels or sdist:
                wheels.sort(key=lambda f: f.name)
                return LockedPackage(canonicalize_name(name), version, tuple(wheels), sdist)
        indexes = mask(", ".join(index_urls), url_secrets(index_urls))
        raise ResolverError(
            f"{name}=={version} has no file with a sha256 for this target on {indexes}",
            hint="the index must publish sha256 digests (PEP 503 #sha256= fragments or PEP 691 JSON)",
        )
