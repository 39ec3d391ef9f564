"""The project's own packages (and path dependencies inside it), installed editable-style from the mounted code.

A package here is its metadata only — name, version, dependencies, entry points, where its code lives. A static
`[project]` is read as it is; anything only the build backend knows (setup.py, setup.cfg, Poetry, a dynamic version
or dependencies) comes from the backend (envlock.lock.backend). The image gets a `.pth` pointing into /work and a
generated dist-info, so `importlib.metadata.version()` and console scripts work while the code stays out of the image.

A version from the VCS (setuptools-scm, hatch-vcs, versioneer…) moves with every commit, the lock's own included: it
is no lock input and not in the image. The lock says `version-from = "vcs"`; each run writes the dist-info with the
version of the commit it runs and mounts it (envlock.run.service).
"""

from __future__ import annotations

import configparser
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from envlock.errors import SpecError
from envlock.fsutil import read_small_text, unreadable
from envlock.lock.backend import MetadataSource, is_buildable, version_from_vcs

# A project name (PEP 508), a version without path separators, a script name that stays in bin/.
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_VERSION = re.compile(r"^[A-Za-z0-9.+!_-]+$")
_SCRIPT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
VersionFrom = Literal["static", "vcs"]


@dataclass(frozen=True)
class LocalPackage:
    """One package whose code is mounted at run time: everything its generated dist-info says."""

    name: str
    version: str
    path: str  # where its import root lives, relative to the project (posix): "." or "src" or "libs/a/src"
    requires: tuple[str, ...] = ()
    entry_points: tuple[tuple[str, str, str], ...] = ()  # (group, name, object reference), sorted
    backend: str = ""  # the build backend the metadata came from; "" when read from a static [project]
    build_requires: tuple[str, ...] = ()  # name==version the backend ran with (recorded, not an input)
    # "vcs": the version is the commit's, asked at run time (version is "" in a lock); "static": `version` is it.
    version_from: VersionFrom = "static"
    # Where the package's build files are, relative to the project: the backend is asked there at run time. Not in
    # the lock (a lock read back says "."; only the spec's copy is asked).
    directory: str = field(default=".", compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The normalized form the lock stores."""
        table = self.identity()
        if self.build_requires:
            table["build-requires"] = list(self.build_requires)
        return table

    def identity(self) -> dict[str, Any]:
        """What the lock's inputs hash: the metadata, not the build tools' versions (another machine may get newer
        ones for the same metadata)."""
        table: dict[str, Any] = {"name": self.name}
        if self.version_from == "vcs":  # the commit's: never an input (committing the lock would move it again)
            table["version-from"] = "vcs"
        else:
            table["version"] = self.version
        table |= {
            "path": self.path,
            "requires": list(self.requires),
            "entry-points": [list(e) for e in self.entry_points],
        }
        if self.backend:  # absent for a static [project]: earlier locks keep their hash
            table["backend"] = self.backend
        return table

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> LocalPackage:
        """Read back as_dict() (from a lock: shapes are checked, a path may not leave the project)."""
        path = str(table["path"])
        if PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
            raise ValueError(f"local package path {path!r}")
        points = tuple((str(g), str(n), str(v)) for g, n, v in table.get("entry-points", []))
        version_from = table.get("version-from", "static")
        if version_from not in ("static", "vcs"):
            raise ValueError(f"local package version-from {version_from!r}")
        package = cls(
            str(table["name"]),
            "" if version_from == "vcs" else str(table["version"]),
            path,
            tuple(map(str, table.get("requires", []))),
            points,
            str(table.get("backend", "")),
            tuple(map(str, table.get("build-requires", []))),
            version_from,
        )
        if problem := package.problem():
            raise ValueError(problem)
        return package

    def problem(self) -> str | None:
        """What makes this metadata unusable as file names in the image (None: nothing)."""
        if not _NAME.match(self.name):
            return f"local package name {self.name!r}"
        if not (self.version_from == "vcs" and not self.version) and not _VERSION.match(self.version):
            return f"local package version {self.version!r}"
        bad = [n for g, n, _ in self.entry_points if g.endswith("_scripts") and not _SCRIPT.match(n)]
        return f"script name {bad[0]!r}" if bad else None

    def at_version(self, version: str) -> LocalPackage:
        """This package with the version a run found (a version from VCS), checked like any other."""
        package = replace(self, version=version)
        if problem := package.problem():
            raise ValueError(problem)
        return package

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


def _declared_root(directory: Path, document: dict[str, Any]) -> str | None:
    """Where the project's own tool says its import root is: Poetry `from`, setuptools package-dir / find where,
    hatch's wheel packages, setup.cfg's package_dir, or setup.py's `package_dir={"": …}` / `find_packages(…)`."""
    tool = document.get("tool", {})
    poetry = tool.get("poetry", {}).get("packages") if isinstance(tool.get("poetry"), dict) else None
    if isinstance(poetry, list) and poetry and isinstance(poetry[0], dict):
        return str(poetry[0].get("from", "."))
    setuptools = tool.get("setuptools", {})
    if isinstance(setuptools, dict):
        package_dir = setuptools.get("package-dir", {})
        if isinstance(package_dir, dict) and isinstance(package_dir.get(""), str):
            return str(package_dir[""])
        find = setuptools.get("packages", {})
        where = find.get("find", {}).get("where") if isinstance(find, dict) else None
        if isinstance(where, list) and where:
            return str(where[0])
    hatch = tool.get("hatch", {}).get("build", {}).get("targets", {}).get("wheel", {}).get("packages")
    if isinstance(hatch, list) and hatch and isinstance(hatch[0], str):
        return PurePosixPath(hatch[0]).parent.as_posix()
    return _setup_root(directory)


# setup.py's `package_dir={"": "src"}` and `find_packages("src")` / `find_packages(where="src")`.
_SETUP_PY_ROOT = (
    re.compile(r"package_dir\s*=\s*\{\s*['\"]['\"]\s*:\s*['\"]([^'\"]+)"),
    re.compile(r"find_(?:namespace_)?packages\(\s*(?:where\s*=\s*)?['\"]([^'\"]+)"),
)


def _setup_root(directory: Path) -> str | None:
    """The import root setup.cfg (`package_dir = =src`, `where`) or setup.py names."""
    found: re.Match[str] | None = None
    if (directory / "setup.cfg").is_file():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(directory / "setup.cfg", encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            return None
        if (found := re.search(r"^\s*=\s*(\S+)", parser.get("options", "package_dir", fallback=""), re.M)) is not None:
            return found.group(1)
        if where := parser.get("options.packages.find", "where", fallback="").strip():
            return where
    if (directory / "setup.py").is_file():
        text = (directory / "setup.py").read_text(encoding="utf-8", errors="replace")
        for pattern in (
            r"package_dir\s*=\s*\{\s*['\"]['\"]\s*:\s*['\"]([^'\"]+)",
            r"find_(?:namespace_)?packages\(\s*(?:where\s*=\s*)?['\"]([^'\"]+)",
        ):
            if (found := re.search(pattern, text)) is not None:
                return found.group(1)
    return None


def _import_root(directory: Path, name: str, document: dict[str, Any] | None = None) -> str:
    """The declared import root; else `src` for a src layout (src/<module>), else the directory itself."""
    declared = _declared_root(directory, document or {})
    if declared is not None and (directory / declared).is_dir():
        return PurePosixPath(declared).as_posix().strip("/") or "."
    module = canonicalize_name(name).replace("-", "_")
    if (directory / "src" / module).is_dir() or ((directory / "src").is_dir() and not (directory / module).exists()):
        return "src"
    return "."


def _is_static(document: dict[str, Any], directory: Path) -> bool:
    """A [project] whose metadata is all written out: read as it is, no backend run."""
    project = document.get("project", {})
    if not isinstance(project, dict):
        return False
    dynamic = set(project.get("dynamic", [])) if isinstance(project.get("dynamic", []), list) else {"version"}
    decided = {"version", "dependencies", "optional-dependencies", "scripts", "gui-scripts", "entry-points"}
    return (
        "build-system" in document
        and isinstance(project.get("name"), str)
        and isinstance(project.get("version"), str)
        and not dynamic & decided
        and not (directory / "setup.py").is_file()
    )


def package_of(
    document: dict[str, Any], directory: Path, project_dir: Path, backend: MetadataSource | None = None
) -> LocalPackage | None:
    """The package a directory builds: from a static [project], else from its build backend (when one is given)."""
    project = document.get("project", {}) if isinstance(document.get("project", {}), dict) else {}
    relative = directory.resolve().relative_to(project_dir.resolve())
    pins: tuple[str, ...] = ()
    version_from: VersionFrom = "static"
    if _is_static(document, directory) or (
        backend is None and "build-system" in document and isinstance(project.get("name"), str)
    ):
        version = project.get("version")
        if not isinstance(version, str):
            version = "0"  # no backend to ask (init's check): the metadata says 0 rather than guess
        name, requires, points, source = (
            str(project["name"]), tuple(str(r) for r in project.get("dependencies", []) if isinstance(r, str)),
            _entry_points(project), "",
        )  # fmt: skip
    elif backend is not None and is_buildable(directory, document):
        found = backend.metadata(directory)
        name, version, requires, points, source, pins = (
            found.name, found.version, found.requires, found.entry_points, found.backend, found.build_requires,
        )  # fmt: skip
        if version_from_vcs(directory, document):
            version, version_from = "", "vcs"  # the commit's, asked when a run starts
    else:
        return None
    root = _import_root(directory, name, document)
    path = str(PurePosixPath(relative.as_posix()) / root) if relative.parts else root
    package = LocalPackage(
        name, version, path.removeprefix("./") or ".", requires, points, source, pins, version_from,
        relative.as_posix() if relative.parts else ".",
    )  # fmt: skip
    if problem := package.problem():
        raise SpecError(f"{directory}: the package's metadata has an unusable {problem}")
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
        return tomllib.loads(read_small_text(path))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and TOMLDecodeError are ValueErrors
        raise SpecError(f"cannot read {path}: {unreadable(exc)}") from exc


def local_packages(
    document: dict[str, Any], project_dir: Path, requirements: list[str], backend: MetadataSource | None = None
) -> tuple[tuple[LocalPackage, ...], LocalPackage | None]:
    """Every local package (the project's own, its uv workspace members, its `file:` requirements inside the
    project), sorted by name; and the project's own package, if it is one."""
    found: dict[str, LocalPackage] = {}
    if (own := package_of(document, project_dir, project_dir, backend)) is not None:
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
        pyproject = directory / "pyproject.toml"
        if not pyproject.is_file() and not (backend and is_buildable(directory, {})):
            continue
        member = package_of(_read(pyproject) if pyproject.is_file() else {}, directory, project_dir, backend)
        if member is not None:
            found.setdefault(canonicalize_name(member.name), member)
    return tuple(found[name] for name in sorted(found)), own
