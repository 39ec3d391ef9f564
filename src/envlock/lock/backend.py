"""The project's own build backend (PEP 517), run isolated on the host: the metadata only it knows.

A `setup.py`, a `setup.cfg`, a `[tool.poetry]` package or a dynamic version (setuptools-scm, `attr:`) says its name,
version and dependencies through its backend alone. envlock installs the backend's build requirements into a venv of
its own (PyPI is reachable from the host, never from inside a container), asks `prepare_metadata_for_build_wheel`,
and keeps the answer in the cache under a fingerprint of the files that decide it.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import Any, Protocol

from envlock.errors import SpecError
from envlock.fsutil import mark_used, published_folder, read_json, read_small_text, unreadable

# The cache's two kinds of entries (under CacheLayout.build_backends): `metadata/<fingerprint>.json` and a venv
# per set of build requirements, `envs/<env_key>/` (with a `ready` file once complete).
METADATA_DIR = "metadata"
ENVS_DIR = "envs"
_METADATA_NAME = re.compile(r"[0-9a-f]{64}\.json")
_ENV_NAME = re.compile(r"[0-9a-f]{32}")
# Bumped when what is cached (or how the fingerprint is taken) changes.
METADATA_SCHEMA = 2
# PEP 517: a project without [build-system] is built by setuptools' legacy backend.
LEGACY_BACKEND = "setuptools.build_meta:__legacy__"
LEGACY_REQUIRES = ("setuptools>=40.8.0",)
# Files whose bytes decide the metadata (besides the git state, for versions taken from tags).
_CONFIG_FILES = ("pyproject.toml", "setup.py", "setup.cfg")
# Where `attr:` / hatch / flit versions usually live: hashed too, so that a version bump is seen.
_VERSION_FILES = ("__init__.py", "version.py", "_version.py", "__about__.py", "__version__.py")
_SKIPPED_DIRS = {"build", "dist", "node_modules", "site-packages", "__pycache__", "tests", "docs"}


class BuildBackendError(SpecError):
    """The project's build backend failed (or its build requirements could not be installed)."""


@dataclass(frozen=True)
class BackendMetadata:
    """What the backend says about the package: the fields of its METADATA and entry_points.txt."""

    name: str
    version: str
    requires: tuple[str, ...]
    entry_points: tuple[tuple[str, str, str], ...]
    backend: str  # e.g. "setuptools.build_meta"
    build_requires: tuple[str, ...]  # name==version of what the backend ran with

    def as_json(self) -> dict[str, Any]:
        """The cached form."""
        return {
            "name": self.name,
            "version": self.version,
            "requires": list(self.requires),
            "entry-points": [list(e) for e in self.entry_points],
            "backend": self.backend,
            "build-requires": list(self.build_requires),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BackendMetadata:
        """Read back as_json()."""
        return cls(
            str(data["name"]),
            str(data["version"]),
            tuple(map(str, data["requires"])),
            tuple((str(g), str(n), str(v)) for g, n, v in data["entry-points"]),
            str(data["backend"]),
            tuple(map(str, data["build-requires"])),
        )


class MetadataSource(Protocol):
    """Asks a project's build backend for its package metadata."""

    def metadata(self, directory: Path) -> BackendMetadata:
        """The metadata of the package built from `directory` (raises BuildBackendError); for a version from VCS,
        cached across commits (its version is then whatever the first answer said: not to be used)."""
        ...

    def version(self, directory: Path) -> str:
        """The version the backend gives the code in `directory` now: asked once per git HEAD and tags."""
        ...


# Build plugins that take a version from the VCS (tags, distance, commit): any of them in [build-system] requires,
# with a version not written out, makes the version dynamic from VCS.
_VCS_TOOLS = frozenset(
    {
        "setuptools-scm", "hatch-vcs", "versioningit", "setuptools-git-versioning", "poetry-dynamic-versioning",
        "dunamai", "versioneer", "pbr", "vcversioner", "setuptools-scm-git-archive",
    }
)  # fmt: skip


def version_from_vcs(directory: Path, document: dict[str, Any]) -> bool:
    """Whether the package's version comes from the VCS (setuptools-scm, hatch-vcs, versioneer, pbr…): then it moves
    with every commit, so it is no lock input; an `attr:` or file version moves only with its file, and is one."""
    tool = document.get("tool", {}) if isinstance(document.get("tool"), dict) else {}
    if any(name in tool for name in ("setuptools_scm", "setuptools-scm", "versioningit", "versioneer")):
        return True
    sources = (tool.get("hatch", {}).get("version", {}), tool.get("pdm", {}).get("version", {}))
    if any(isinstance(t, dict) and t.get("source") in ("vcs", "scm") for t in sources):
        return True
    for name in ("poetry-dynamic-versioning", "setuptools-git-versioning"):
        table = tool.get(name, {})
        if isinstance(table, dict) and (table.get("enable") or table.get("enabled")):
            return True
    for name in ("setup.py", "setup.cfg"):
        path = directory / name
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        if "use_scm_version" in text or "versioneer" in text or re.search(r"^\s*pbr\s*=\s*True", text, re.M):
            return True
    project = document.get("project", {}) if isinstance(document.get("project"), dict) else {}
    written = isinstance(project.get("version"), str) or isinstance(tool.get("poetry", {}).get("version"), str)
    requires = document.get("build-system", {}).get("requires", [])
    names = {_requirement_name(r) for r in requires if isinstance(r, str)} if isinstance(requires, list) else set()
    return not written and bool(names & _VCS_TOOLS) and not _setup_cfg_version(directory)


def _requirement_name(requirement: str) -> str:
    found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", found.group(1)).lower() if found else ""


def _setup_cfg_version(directory: Path) -> bool:
    """setup.cfg writes its version (a literal, `attr:` or `file:`): a file decides it, not the VCS."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(directory / "setup.cfg", encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return False
    return bool(parser.get("metadata", "version", fallback="").strip())


@dataclass(frozen=True)
class BuildSystem:
    """[build-system] as PEP 517 reads it (the legacy setuptools one when absent)."""

    backend: str
    requires: tuple[str, ...]
    backend_path: tuple[str, ...] = ()


def build_system(document: dict[str, Any]) -> BuildSystem:
    """The backend a pyproject document names, or setuptools' legacy one (PEP 517's fallback)."""
    table = document.get("build-system")
    if not isinstance(table, dict) or not isinstance(table.get("build-backend"), str):
        requires = table.get("requires") if isinstance(table, dict) else None
        if isinstance(requires, list) and requires:
            return BuildSystem(LEGACY_BACKEND, tuple(map(str, requires)))
        return BuildSystem(LEGACY_BACKEND, LEGACY_REQUIRES)
    requires = table.get("requires", [])
    paths = table.get("backend-path", [])
    return BuildSystem(
        table["build-backend"],
        tuple(str(r) for r in requires) if isinstance(requires, list) else (),
        tuple(str(p) for p in paths) if isinstance(paths, list) else (),
    )


def is_buildable(directory: Path, document: dict[str, Any]) -> bool:
    """A package its own tool would install: setup.py / setup.cfg, [build-system] or a Poetry package."""
    if (directory / "setup.py").is_file() or (directory / "setup.cfg").is_file():
        return True
    poetry = document.get("tool", {}).get("poetry")
    if isinstance(poetry, dict) and poetry.get("package-mode", True) is False:
        return False
    return "build-system" in document


def parse_metadata(text: str, entry_points: str) -> tuple[str, str, tuple[str, ...], tuple[tuple[str, str, str], ...]]:
    """Name, version, Requires-Dist and entry points of a METADATA file and its entry_points.txt."""
    message = Parser().parsestr(text)
    name, version = message.get("Name"), message.get("Version")
    if not name or not version:
        raise ValueError("METADATA has no Name or Version")
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # entry point names keep their case
    parser.read_string(entry_points)
    points = [
        (group, key.strip(), value.strip()) for group in parser.sections() for key, value in parser[group].items()
    ]
    return str(name), str(version), tuple(message.get_all("Requires-Dist") or ()), tuple(sorted(points))


def _git_dir(directory: Path) -> Path | None:
    for parent in (directory.resolve(), *directory.resolve().parents):
        candidate = parent / ".git"
        if candidate.is_dir():
            return candidate
        if candidate.is_file():  # a worktree: "gitdir: PATH"
            text = candidate.read_text(encoding="utf-8", errors="replace").strip()
            return Path(text.removeprefix("gitdir:").strip()) if text.startswith("gitdir:") else None
    return None


def _git_state(directory: Path) -> list[bytes]:
    """HEAD's commit and the tags (read from the files, no git run): a version from tags moves with them."""
    git = _git_dir(directory)
    if git is None:
        return []
    common = git
    if (git / "commondir").is_file():
        common = (git / (git / "commondir").read_text(encoding="utf-8").strip()).resolve()
    parts: list[bytes] = []
    head = (git / "HEAD").read_bytes() if (git / "HEAD").is_file() else b""
    parts.append(head)
    if head.startswith(b"ref: "):
        ref = head[5:].strip().decode(errors="replace")
        if (common / ref).is_file():
            parts.append((common / ref).read_bytes())
    if (common / "packed-refs").is_file():
        parts.append((common / "packed-refs").read_bytes())
    tags = common / "refs" / "tags"
    if tags.is_dir():
        parts += [
            p.relative_to(tags).as_posix().encode() + p.read_bytes() for p in sorted(tags.rglob("*")) if p.is_file()
        ]
    return parts


def _version_files(directory: Path, depth: int = 4) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(directory):
        level = len(Path(root).relative_to(directory).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIRS and level < depth)
        found += [Path(root) / f for f in sorted(files) if f in _VERSION_FILES]
    return found


def fingerprint(directory: Path, system: BuildSystem, *, vcs: bool = False, git: bool = False) -> str:
    """sha256 over what decides the metadata: the build files, requirement files, and the version files (`vcs`:
    left out, the version is not read from them; a plugin may even write one); with `git`, HEAD and the tags too
    (what a version from VCS is made of: only the run-time version is keyed by them, never the lock's metadata)."""
    salt = f"{METADATA_SCHEMA}\n{json.dumps(system.__dict__, sort_keys=True)}\n{vcs}\n{git}\n"
    digest = hashlib.sha256(salt.encode())
    files = [directory / n for n in _CONFIG_FILES] + sorted(directory.glob("requirements*.txt"))
    for file in [*files, *([] if vcs else _version_files(directory))]:
        if file.is_file():
            digest.update(file.relative_to(directory).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    for part in _git_state(directory) if git else []:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def _last_line(output: str | bytes | None) -> str:
    text = output.decode(errors="replace") if isinstance(output, bytes) else output or ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


class IsolatedBackend:
    """The real adapter: a cached venv per set of build requirements (made with uv), pyproject_hooks to call in."""

    def __init__(self, cache: Path, uv_bin: str | None = None) -> None:
        self.cache = cache
        self._uv_bin = uv_bin

    def _uv(self) -> str:
        if self._uv_bin is None:
            from envlock.lock.uv import find_uv  # noqa: PLC0415

            self._uv_bin = find_uv()
        return self._uv_bin

    def metadata(self, directory: Path) -> BackendMetadata:
        """The backend's metadata, from the cache when the fingerprint is known (a commit alone never moves it)."""
        document = _pyproject(directory)
        system = build_system(document)
        return self._cached(
            directory, system, fingerprint(directory, system, vcs=version_from_vcs(directory, document))
        )

    def version(self, directory: Path) -> str:
        """The backend's version of the code as it is now: asked again only when HEAD or a tag moved."""
        system = build_system(_pyproject(directory))
        return self._cached(directory, system, fingerprint(directory, system, vcs=True, git=True)).version

    def _cached(self, directory: Path, system: BuildSystem, key: str) -> BackendMetadata:
        cached = self.cache / METADATA_DIR / f"{key}.json"
        if cached.is_file():
            try:
                found = BackendMetadata.from_json(json.loads(cached.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError):
                pass  # a damaged entry: ask the backend again
            else:
                mark_used(cached)
                return found
        found, env = self._ask(directory, system)
        cached.parent.mkdir(parents=True, exist_ok=True)
        from envlock.fsutil import atomic_write_text  # noqa: PLC0415

        # The venv it was asked in (its own build requirements may have added to [build-system] requires): kept by
        # gc while this entry is.
        entry = {**found.as_json(), "env": env.name}
        atomic_write_text(cached, json.dumps(entry, sort_keys=True) + "\n")
        return found

    def _env(self, requires: tuple[str, ...], backend: str) -> Path:
        """A venv holding exactly `requires`, made once per set (atomically: another envlock may be making it)."""
        final = self.cache / ENVS_DIR / env_key(requires)
        if (final / "ready").is_file():
            mark_used(final)
            return final
        with published_folder(final, prefix=f".{final.name}-") as work:  # made meanwhile by another envlock: theirs
            python = os.environ.get("ENVLOCK_BUILD_PYTHON") or shutil.which("python3") or "python3"
            self._run([self._uv(), "venv", "--quiet", "--no-config", "--python", python, str(work)], backend)
            if requires:
                self._run(
                    [self._uv(), "pip", "install", "--quiet", "--no-config", "--python", str(work / "bin" / "python"),
                     *requires],
                    backend, what=f"cannot install its build requirements ({', '.join(requires)})",
                )  # fmt: skip
            (work / "ready").write_text("", encoding="utf-8")
        return final

    @staticmethod
    def _run(command: list[str], backend: str, what: str = "cannot make its build environment") -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, check=True).stdout
        except subprocess.CalledProcessError as exc:
            raise BuildBackendError(
                f"the build backend {backend} {what}: {_last_line(exc.stderr or exc.stdout)}",
                hint="check [build-system] requires, and that the package index can be reached from this machine",
            ) from exc
        except OSError as exc:
            raise BuildBackendError(f"the build backend {backend} {what}: {exc}") from exc

    def _ask(self, directory: Path, system: BuildSystem) -> tuple[BackendMetadata, Path]:
        """The backend's answer, and the venv it ran in."""
        from pyproject_hooks import (  # noqa: PLC0415
            BackendUnavailable,
            BuildBackendHookCaller,
            HookMissing,
            quiet_subprocess_runner,
        )

        backend = system.backend.removesuffix(":__legacy__")
        requires = system.requires
        env = self._env(requires, backend)
        leftovers = _egg_infos(directory)
        try:
            hooks = BuildBackendHookCaller(
                str(directory),
                system.backend,
                list(system.backend_path) or None,
                runner=quiet_subprocess_runner,
                python_executable=str(env / "bin" / "python"),
            )
            extra = tuple(hooks.get_requires_for_build_wheel())
            if extra and not set(extra) <= set(requires):
                requires = tuple(dict.fromkeys((*requires, *extra)))
                env = self._env(requires, backend)
                hooks.python_executable = str(env / "bin" / "python")
            with tempfile.TemporaryDirectory(prefix="envlock-metadata-") as out:
                info = Path(out) / hooks.prepare_metadata_for_build_wheel(out)
                text = (info / "METADATA").read_text(encoding="utf-8")
                points = info / "entry_points.txt"
                name, version, requires_dist, entry_points = parse_metadata(
                    text, points.read_text(encoding="utf-8") if points.is_file() else ""
                )
        except subprocess.CalledProcessError as exc:
            raise BuildBackendError(
                f"the build backend {backend} failed on {directory}: {_last_line(exc.output)}",
                hint="run the same build yourself (`python -m build --wheel`) to see its whole output",
            ) from exc
        except (BackendUnavailable, HookMissing) as exc:
            raise BuildBackendError(
                f"the build backend {backend} cannot be used: {_last_line(getattr(exc, 'message', None) or str(exc))}",
                hint="check [build-system] build-backend and requires",
            ) from exc
        except (OSError, ValueError) as exc:
            raise BuildBackendError(f"the build backend {backend} gave no usable metadata: {exc}") from exc
        finally:
            # setuptools writes NAME.egg-info beside the code: take back what was not there before.
            for made in _egg_infos(directory) - leftovers:
                shutil.rmtree(made, ignore_errors=True)
        freeze = self._run([self._uv(), "pip", "freeze", "--python", str(env / "bin" / "python")], backend)
        pins = tuple(sorted(line.strip() for line in freeze.splitlines() if "==" in line))
        return BackendMetadata(name, version, requires_dist, entry_points, backend, pins), env


def env_key(requires: tuple[str, ...]) -> str:
    """The name of the venv made for a set of build requirements."""
    return hashlib.sha256("\n".join(sorted(requires)).encode()).hexdigest()[:32]


def entries_used(directory: Path) -> frozenset[str]:
    """The build-backend cache entries (`metadata/<key>.json`, `envs/<key>`) the package in `directory` uses as its
    files are now: its metadata (and, for a version from VCS, this commit's version) and the venv of its declared
    build requirements. A lock needs no more: it holds the metadata itself, and a run's version is in its record."""
    document = _pyproject(directory)
    system = build_system(document)
    vcs = version_from_vcs(directory, document)
    keys = {fingerprint(directory, system, vcs=vcs)} | (
        {fingerprint(directory, system, vcs=True, git=True)} if vcs else set()
    )
    return frozenset({f"{METADATA_DIR}/{key}.json" for key in keys} | {f"{ENVS_DIR}/{env_key(system.requires)}"})


@dataclass(frozen=True)
class CacheEntry:
    """One finished entry of the build-backend cache, and the entries it keeps alive (a metadata entry: its venv)."""

    name: str  # relative to the cache: metadata/<key>.json or envs/<key>
    path: Path
    uses: frozenset[str] = frozenset()


def cache_entries(cache: Path) -> list[CacheEntry]:
    """Every entry of a build-backend cache, by name. Dot-names (being made or removed), links and names the
    cache never makes are no entries; the cache's own folders must be real folders inside it (no link out)."""
    found: list[CacheEntry] = []
    for kind, pattern in ((METADATA_DIR, _METADATA_NAME), (ENVS_DIR, _ENV_NAME)):
        folder = cache / kind
        if not _real_folder(folder, cache):
            continue
        for path in sorted(folder.iterdir()):
            if not pattern.fullmatch(path.name) or path.is_symlink():
                continue
            uses: frozenset[str] = frozenset()
            if kind == METADATA_DIR:
                data = read_json(path)
                env = data.get("env") if isinstance(data, dict) else None
                uses = frozenset({f"{ENVS_DIR}/{env}"}) if isinstance(env, str) and _ENV_NAME.fullmatch(env) else uses
            found.append(CacheEntry(f"{kind}/{path.name}", path, uses))
    return found


def _real_folder(folder: Path, parent: Path) -> bool:
    """`folder` is a folder of its own inside `parent`: neither it nor `parent` a link to somewhere else."""
    try:
        return folder.is_dir() and folder.resolve() == parent.resolve() / folder.name and not parent.is_symlink()
    except OSError:
        return False


def _egg_infos(directory: Path) -> set[Path]:
    return {p for pattern in ("*.egg-info", "*/*.egg-info") for p in directory.glob(pattern) if p.is_dir()}


def _pyproject(directory: Path) -> dict[str, Any]:
    path = directory / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(read_small_text(path))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and TOMLDecodeError are ValueErrors
        raise SpecError(f"cannot read {path}: {unreadable(exc)}") from exc


def default_backend() -> MetadataSource:
    """The real backend runner, caching in the user's envlock cache."""
    from envlock.paths import CacheLayout, cache_root  # noqa: PLC0415

    return IsolatedBackend(CacheLayout(cache_root()).build_backends)
