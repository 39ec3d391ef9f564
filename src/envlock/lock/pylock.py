"""PEP 751 `pylock.toml`: read uv's output, write preferences for uv, export a lock for other installers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from packaging.utils import canonicalize_name

from envlock.lock.credentials import redact
from envlock.lock.resolve import LockedFile, LockedPackage, filename_from_url, utc_seconds

if TYPE_CHECKING:
    import tomlkit.items


def _file_from_table(table: dict[str, Any]) -> LockedFile:
    url = redact(str(table["url"]))
    upload = table.get("upload-time")
    return LockedFile(
        name=str(table.get("name") or filename_from_url(url)),
        url=url,
        sha256=str(table["hashes"]["sha256"]),
        size=int(table["size"]) if "size" in table else None,
        upload_time=utc_seconds(upload) if isinstance(upload, datetime) else None,
    )


def packages_from_pylock(document: dict[str, Any]) -> list[LockedPackage]:
    """LockedPackages from a parsed pylock.toml (credentials stripped from every URL)."""
    packages = []
    for entry in document.get("packages", []):
        wheels = tuple(sorted((_file_from_table(w) for w in entry.get("wheels", [])), key=lambda f: f.name))
        sdist = _file_from_table(entry["sdist"]) if "sdist" in entry else None
        packages.append(
            LockedPackage(
                name=canonicalize_name(str(entry["name"])),
                version=str(entry["version"]),
                wheels=wheels,
                sdist=sdist,
            )
        )
    return sorted(packages, key=lambda p: p.name)


def file_table(file: LockedFile) -> dict[str, Any]:
    """A PEP 751 file table (inline)."""
    table: dict[str, Any] = {"name": file.name, "url": file.url}
    if file.upload_time is not None:
        table["upload-time"] = file.upload_time
    if file.size is not None:
        table["size"] = file.size
    table["hashes"] = {"sha256": file.sha256}
    return table


def package_table(package: LockedPackage, marker: str | None = None) -> tomlkit.items.Table:
    """A `[[packages]]` entry: name, version, optional marker, sdist, wheels one per line."""
    import tomlkit  # noqa: PLC0415  (writing only: a host that only reads locks, e.g. gpu-check, may lack it)

    table = tomlkit.table()
    table["name"] = package.name
    table["version"] = package.version
    if marker:
        table["marker"] = marker
    if package.sdist is not None:
        table["sdist"] = _inline(file_table(package.sdist))
    if package.wheels:
        wheels = tomlkit.array()
        wheels.multiline(True)
        for wheel in package.wheels:
            wheels.append(_inline(file_table(wheel)))
        table["wheels"] = wheels
    return table


def _inline(mapping: dict[str, Any]) -> tomlkit.items.InlineTable:
    import tomlkit  # noqa: PLC0415

    inline = tomlkit.inline_table()
    for key, value in mapping.items():
        inline[key] = _inline(value) if isinstance(value, dict) else value
    return inline


def dump_pylock(
    packages: Iterable[tuple[LockedPackage, str | None]],
    requires_python: str,
    environments: Sequence[str] = (),
    created_by: str = "envlock",
) -> str:
    """A PEP 751 document: each package with the marker that limits it (None when it applies everywhere)."""
    import tomlkit  # noqa: PLC0415

    document = tomlkit.document()
    document["lock-version"] = "1.0"
    if environments:
        document["environments"] = list(environments)
    document["requires-python"] = requires_python
    document["created-by"] = created_by
    entries = tomlkit.aot()
    for package, marker in packages:
        entries.append(package_table(package, marker))
    document["packages"] = entries
    return tomlkit.dumps(document)
