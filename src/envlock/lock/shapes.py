"""Shapes of values read from files others may have written: each check returns a problem, or None when fine.

A lock arrives in pull requests and anyone can recompute its hash, so every digest, name and URL in it is checked
here before any of them becomes part of a path, a command line or a request.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    is_normalized_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# \s is what str.isspace() calls white space (Unicode included); one scan in C, not a generator per character:
# a lock checks hundreds of URLs at every `envlock run`.
_SPACE = re.compile(r"\s")
URL_SCHEMES = ("http", "https", "file")


def sha256_problem(value: str) -> str | None:
    """A bare sha256 digest: exactly 64 lowercase hex digits (it names files in the caches)."""
    return None if _SHA256.match(value) else f"{value!r} is not a sha256 digest (64 lowercase hex digits)"


def digest_problem(value: str) -> str | None:
    """An image or layer ID: `sha256:` and 64 lowercase hex digits."""
    if value.startswith("sha256:") and _SHA256.match(value.removeprefix("sha256:")):
        return None
    return f"{value!r} is not a digest `sha256:<64 lowercase hex digits>`"


def url_problem(value: str) -> str | None:
    """An http(s):// URL with a host, or a file:// URL."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError as exc:
        return f"{value!r} is not a URL ({exc})"
    if parts.scheme not in URL_SCHEMES:
        return f"{value!r} must be an http(s):// or file:// URL"
    if parts.scheme != "file" and not parts.hostname:
        return f"{value!r} has no host"
    if _SPACE.search(value):
        return f"{value!r} contains white space"
    return None


def package_name_problem(value: str) -> str | None:
    """A normalized Python package name (what envlock writes: lowercase, `-` separated)."""
    return None if is_normalized_name(value) else f"{value!r} is not a normalized package name"


def version_problem(value: str) -> str | None:
    """A PEP 440 version."""
    try:
        Version(value)
    except InvalidVersion:
        return f"{value!r} is not a version"
    return None


def wheel_name_problem(value: str) -> str | None:
    """A wheel's file name (`name-version-python-abi-platform.whl`), with no path in it."""
    return _file_name_problem(value, parse_wheel_filename, "a wheel")


def sdist_name_problem(value: str) -> str | None:
    """An sdist's file name (`name-version.tar.gz` or `.zip`), with no path in it."""
    return _file_name_problem(value, parse_sdist_filename, "an sdist")


def _file_name_problem(value: str, parse: Callable[[str], object], kind: str) -> str | None:
    # It becomes a file name in the caches: a path (either separator) is refused before the name's own rules.
    if "/" in value or "\\" in value:
        return f"{value!r} is a path, not a file name"
    try:
        parse(value)
    except (InvalidWheelFilename, InvalidSdistFilename) as exc:
        return f"{value!r} is not {kind} file name ({exc})"
    return None


DEBIAN_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$")
_DEBIAN_VERSION = re.compile(r"^[A-Za-z0-9.+~:-]+$")


def debian_package_problem(value: str) -> str | None:
    """A Debian package name, optionally `=version`."""
    return None if DEBIAN_PACKAGE.match(value) else f"{value!r} is not a Debian package name"


def debian_version_problem(value: str) -> str | None:
    """A Debian package version."""
    return None if _DEBIAN_VERSION.match(value) else f"{value!r} is not a Debian package version"
