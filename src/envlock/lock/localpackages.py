"""The project's own packages (and path dependencies inside it), installed editable-style from the mounted code.

A package here is its metadata only — name, version, dependencies, entry points, where its code lives — read from
`[project]` without running a build backend. The image gets a `.pth` pointing into /work and a generated
dist-info, so `importlib.metadata.version()` and console scripts work while the code itself stays out of the image.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from envlock.errors import SpecError

# A project name (PEP 508), a version without path separators, a script name that stays in bin/.
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_VERSION = re.compile(r"^[A-Za-z0-9.+!_-]+$")
_SCRIPT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class LocalPackage:
    """One package whose code is mounted at run time: everything its generated dist-info says."""

    name: str
    version: str
    path: str  # where its import root lives, relative to the project (posix): "." or "src" or "libs/a/src"
    requires: tuple[str, ...] = ()
    entry_points: tuple[tuple[str, str, str], ...] = ()  # (group, name, object reference), sorted

    def as_dict(self) -> dict[str, Any]:
        """The normalized form the lock stores and hashes."""
        return {
            "name": self.name,
            "version": self.version,
            "path": self.path,
            "requires": list(self.requires),
            "entry-points": [list(e) for e in self.entry_points],
        }

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> LocalPackage:
        """Read back as_dict() (from a lock: shapes are checked, a path may not leave the project)."""
        path = str(table["path"])
        if PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
            raise ValueError(f"local package path {path!r}")
        points = tuple((str(g), str(n), str(v)) for g, n, v in table.get("entry-points", []))
        package = cls(
            str(table["name"]), str(table["version"]), path, tuple(map(str, table.get("requires", []))), points
        )
        if problem := package.problem():
            raise ValueError(problem)
        return package

    def problem(self) -> str | None:
        """What makes this metadata unusable as file names in the image (None: nothing)."""
        if not _NAME.match(self.name):
            return f"local package name {self.name!r}"
        if not _VERSION.match(self.version):
            return f"local package version {self.version!r}"
        bad = [n for g, n, _ in self.entry_points if g.endswith("_scripts") and not _SCRIPT.match(n)]
        return f"script name {bad[0]!r}" if bad else None

    @property
    def dist_name(self) -> str:
        """The name as in a dist-info directory (`my_pkg`)."""
        return canonicalize_name(self.name).replace("-", "_")


def _entry_points(project: dict[str, Any]) -> tuple[tuple[str, str, str], ...]:
    points = [("console_scripts", n, str(v)) for n, v in project.get("scripts", {}).items()]
    points += [("gui_scripts", n, str(v)) for n, v in project.get("gui-scripts", {}).items()]
    for group, table in project.get("entry-points", {}).items():
        points += [(str(group), str(n), str(v)) for n, v in table.items()]
    return tuple(sorted(points))


def _import_root(directory: Path, name: str) -> str:
    """`src` for a src layout (src/<module> or a [tool.hatch]/setuptools hint), else the directory itself."""
    module = canonicalize_name(name).replace("-", "_")
    if (directory / "src" / module).is_dir() or ((directory / "src").is_dir() and not (directory / module).exists()):
        return "src"
    return "."


def package_of(document: dict[str, Any], directory: Path, project_dir: Path) -> LocalPackage | None:
    """The package a pyproject.toml builds, when it has [build-system] and a named [project]."""
    project = document.get("project", {})
    if "build-system" not in document or not isinstance(project.get("name"), str):
        return None
    version = project.get("version")
    if not isinstance(version, str):
        # A dynamic version is only known to the build backend; the metadata says 0 rather than guess.
        version = "0"
    requires = project.get("dependencies", [])
    root = _import_root(directory, project["name"])
    relative = directory.resolve().relative_to(project_dir.resolve())
    path = str(PurePosixPath(relative.as_posix()) / root) if relative.parts else root
    package = LocalPackage(
        project["name"],
        version,
        path.removeprefix("./") or ".",
        tuple(str(r) for r in requires if isinstance(r, str)),
        _entry_points(project),
    )
    if problem := package.problem():
        raise SpecError(f"{directory / 'pyproject.toml'}: [project] has an unusable {problem}")
    return package


def local_url_path(requirement: Requirement, project_dir: Path) -> Path | None:
    """The directory of a `pkg @ file:…` requirement when it lies inside the project, else None."""
    if not requirement.url or not requirement.url.startswith("file:"):
        return None
    raw = requirement.url.replace("${PROJECT_ROOT}", str(project_dir.resolve()))
    parts = urlsplit(raw)
    path = Path(unquote(parts.netloc + parts.path)) if parts.netloc not in ("", "localhost") else Path(
        unquote(parts.path))  # fmt: skip
    path = path if path.is_absolute() else project_dir / path
    try:
        path.resolve().relative_to(project_dir.resolve())
    except ValueError:
        return None
    return path


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"cannot read {path}: {exc}") from exc


def local_packages(document: dict[str, Any], project_dir: Path, requirements: list[str]) -> tuple[LocalPackage, ...]:
    """The project's own package, its uv workspace members and its `file:` requirements inside the project."""
    found: dict[str, LocalPackage] = {}
    if (own := package_of(document, project_dir, project_dir)) is not None:
        found[canonicalize_name(own.name)] = own
    members = document.get("tool", {}).get("uv", {}).get("workspace", {}).get("members", [])
    directories = [p for pattern in members for p in sorted(project_dir.glob(str(pattern)))]
    for requirement in requirements:
        try:
            parsed = Requirement(requirement)
        except InvalidRequirement:
            continue
        if (path := local_url_path(parsed, project_dir)) is not None:
            directories.append(path)
    for directory in directories:
        if not (directory / "pyproject.toml").is_file():
            continue
        member = package_of(_read(directory / "pyproject.toml"), directory, project_dir)
        if member is not None:
            found.setdefault(canonicalize_name(member.name), member)
    return tuple(found[name] for name in sorted(found))
