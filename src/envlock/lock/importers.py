"""Other tools' environment files read into what [tool.envlock] needs: requirements, exact pins, indexes.

Formats: pip's requirements files (with `-r`/`-c` includes, markers, hashes, index options), uv.lock, PEP 751
pylock.toml, poetry.lock and a conda environment.yml (its packages under their PyPI names, Python version and pip
section).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from envlock.errors import ImportSourceError
from envlock.fsutil import read_small_text, unreadable
from envlock.lock import conda
from envlock.lock.backend import build_system, is_buildable

# Looked for in this order when `envlock init` is given no --from: real locks before wish lists.
SOURCES = (
    "uv.lock",
    "poetry.lock",
    "pylock.toml",
    "requirements.txt",
    "environment.yml",
    "environment.yaml",
)
PYPI = "https://pypi.org/simple"
_PIN = re.compile(r"^\s*===?\s*[^,*;\s]+\s*$")


@dataclass
class Imported:
    """What a source file says about the environment, in envlock's terms."""

    source: Path
    requirements: list[str] = field(default_factory=list)  # the wishes (PEP 508)
    constraints: list[str] = field(default_factory=list)  # exact pins of a lock: `name==version[; marker]`
    index_url: str | None = None
    extra_index_urls: list[str] = field(default_factory=list)
    python: str | None = None  # "3.11", when the source names one
    cuda: str | None = None  # "cpu" or "X.Y", when the source chooses a torch build (conda's pytorch-cuda, cpuonly)
    not_handled: list[str] = field(default_factory=list)  # what envlock cannot take over (conda-only packages)
    notes: list[str] = field(default_factory=list)
    pins_from_lock: bool = False  # the source is a lock: its versions become constraints

    def add_index(self, url: str, primary: bool = False) -> None:
        """An index the source resolves against (the first primary one wins; PyPI is the default)."""
        url = url.rstrip("/")
        if primary and self.index_url is None:
            self.index_url = url
        elif url != (self.index_url or PYPI) and url not in self.extra_index_urls:
            self.extra_index_urls.append(url)


def detect(project_dir: Path) -> Path | None:
    """The source `envlock init` imports when none is named: the first of SOURCES present."""
    for name in SOURCES:
        if (project_dir / name).is_file():
            return project_dir / name
    return None


def import_file(path: Path, project: dict[str, Any]) -> Imported:
    """Read one source; `project` is the project's parsed pyproject.toml (empty when there is none)."""
    name = path.name
    if not path.is_file():
        raise ImportSourceError(f"no file {path} to import", hint="name an existing file with --from FILE")
    if name.endswith((".yml", ".yaml")):
        return from_conda(path)
    if name == "uv.lock":
        return from_uv_lock(path, project)
    if name == "poetry.lock":
        return from_poetry_lock(path, project)
    if name == "pylock.toml" or (name.startswith("pylock.") and name.endswith(".toml")):
        return from_pylock(path, project)
    if name.endswith((".txt", ".in")):
        return from_requirements(path)
    raise ImportSourceError(
        f"cannot tell what kind of file {name} is",
        hint=f"envlock init reads {', '.join(SOURCES)} (requirements files may have any name ending in .txt or .in)",
    )


# --- pip requirements files -------------------------------------------------------------------------------------


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines with `\\` continuations joined and comments removed, with the number of their first line."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw)
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if pending.strip():
            out.append((start, pending.strip()))
        pending = ""
    if pending.strip():
        out.append((start, pending.strip()))
    return out


def from_requirements(path: Path) -> Imported:
    """A pip requirements file: requirement lines (hashes dropped: envlock locks its own), includes followed."""
    imported = Imported(path)
    _read_requirements(path, imported, into_constraints=False, seen=())
    return imported


def _option(words: list[str], index: int, line: str, where: str) -> tuple[str, int]:
    word = words[index]
    if "=" in word:
        return word.split("=", 1)[1], index + 1
    if index + 1 >= len(words):
        raise ImportSourceError(f"{where}: {word} needs a value: {line!r}")
    return words[index + 1], index + 2


def _read_requirements(path: Path, imported: Imported, *, into_constraints: bool, seen: tuple[Path, ...]) -> None:
    resolved = path.resolve()
    if resolved in seen:
        raise ImportSourceError(f"{path} includes itself (through {' -> '.join(p.name for p in seen)})")
    try:
        text = read_small_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportSourceError(f"cannot read {path}: {unreadable(exc)}") from exc
    for number, line in _logical_lines(text):
        where = f"{path.name}:{number}"
        if line.startswith("-") and not line.startswith("--hash"):
            _requirements_option(line, path, where, imported, into_constraints=into_constraints, seen=(*seen, resolved))
            continue
        # Options may follow a requirement: `pkg==1.0 --hash=sha256:…` (hashes: envlock records its own).
        requirement = re.split(r"\s+--?[a-z]", line, maxsplit=1)[0].strip()
        try:
            parsed = Requirement(requirement)
        except InvalidRequirement as exc:
            if re.match(r"^(\.{0,2}/|file:|https?:|git\+)", requirement):
                imported.not_handled.append(f"{requirement} ({where}: a path or URL, not an index package)")
                continue
            raise ImportSourceError(
                f"{where}: {requirement!r} is not a valid requirement ({str(exc).splitlines()[0]})"
            ) from exc
        if parsed.url:
            imported.not_handled.append(f"{requirement} ({where}: a direct URL; envlock locks index packages)")
            continue
        (imported.constraints if into_constraints else imported.requirements).append(str(parsed))


def _requirements_option(
    line: str, path: Path, where: str, imported: Imported, *, into_constraints: bool, seen: tuple[Path, ...]
) -> None:
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise ImportSourceError(f"{where}: cannot read {line!r} ({exc})") from exc
    index = 0
    while index < len(words):
        word = words[index]
        flag = word.split("=", 1)[0]
        if flag in ("-r", "--requirement", "-c", "--constraint"):
            value, index = _option(words, index, line, where)
            constraint = flag in ("-c", "--constraint")
            _read_requirements(
                path.parent / value, imported, into_constraints=into_constraints or constraint, seen=seen
            )
        elif flag in ("-i", "--index-url"):
            value, index = _option(words, index, line, where)
            imported.add_index(value, primary=True)
        elif flag == "--extra-index-url":
            value, index = _option(words, index, line, where)
            imported.add_index(value)
        elif flag in ("-e", "--editable"):
            value, index = _option(words, index, line, where)
            _editable(path.parent, value, where, imported, into_constraints=into_constraints)
        elif flag in ("-f", "--find-links", "--trusted-host", "--hash"):
            value, index = _option(words, index, line, where)
            if flag != "--hash":
                imported.notes.append(f"{where}: {flag} {value} ignored (envlock resolves against indexes only)")
        elif flag in ("--no-index", "--pre", "--prefer-binary", "--only-binary", "--no-binary", "--require-hashes"):
            index += 1 if "=" in word or flag in ("--no-index", "--pre", "--prefer-binary", "--require-hashes") else 2
            imported.notes.append(f"{where}: {flag} ignored")
        else:
            raise ImportSourceError(f"{where}: unknown option {word!r} in {path.name}")


def _editable(directory: Path, value: str, where: str, imported: Imported, *, into_constraints: bool) -> None:
    """`-e PATH`: a package with [project] metadata becomes a local package (`name @ file:PATH`); else named."""
    target = directory / value.removeprefix("file:")
    document: dict[str, Any] = {}
    if (target / "pyproject.toml").is_file():
        try:
            document = tomllib.loads(read_small_text(target / "pyproject.toml"))
        except (OSError, ValueError) as exc:  # UnicodeDecodeError and TOMLDecodeError are ValueErrors
            raise ImportSourceError(f"{where}: cannot read {target / 'pyproject.toml'}: {unreadable(exc)}") from exc
    name = document.get("project", {}).get("name")
    if target.resolve() == directory.resolve() and is_buildable(target, document):
        imported.notes.append(
            f"{where}: -e {value} is the project itself: installed from the mounted code with the metadata its "
            f"build backend ({build_system(document).backend.removesuffix(':__legacy__')}) gives"
        )
        return
    if not isinstance(name, str) or "build-system" not in document or re.match(r"^[a-z+]+://", value):
        imported.not_handled.append(
            f"-e {value} ({where}: a package inside the project whose name only its build backend knows: add "
            f"`NAME @ file:{value.removeprefix('file:')}` to [tool.envlock] requirements)"
        )
        return
    relative = value.removeprefix("file:").rstrip("/")
    (imported.constraints if into_constraints else imported.requirements).append(f"{name} @ file:{relative}")


# --- lock files -------------------------------------------------------------------------------------------------


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(read_small_text(path))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and TOMLDecodeError are ValueErrors
        raise ImportSourceError(f"cannot read {path}: {unreadable(exc)}") from exc


def _wishes_from_project(imported: Imported, project: dict[str, Any], fallback: list[str]) -> None:
    """A lock's project says what it wants in [project].dependencies; without them, every pin is a wish."""
    table = project.get("project", {})
    if isinstance(table.get("dependencies"), list) and "dependencies" not in table.get("dynamic", []):
        return  # [tool.envlock] defaults to [project].dependencies: nothing to copy
    imported.requirements.extend(fallback)


def _pin(name: str, version: str, marker: str | None = None) -> str:
    text = f"{canonicalize_name(name)}=={version}"
    return f"{text} ; {marker}" if marker else text


def from_uv_lock(path: Path, project: dict[str, Any]) -> Imported:
    """uv.lock: every registry package's version as a constraint; the project's own packages are left out."""
    document = _load_toml(path)
    imported = Imported(path, pins_from_lock=True)
    versions: dict[str, list[dict[str, Any]]] = {}
    for package in document.get("package", []):
        source = package.get("source", {})
        if "registry" not in source:
            if not {"editable", "virtual", "directory", "path"} & set(source):
                imported.not_handled.append(f"{package['name']} ({'/'.join(source) or 'no source'} source)")
            continue  # the project itself and workspace members: the mounted code
        imported.add_index(str(source["registry"]), primary=True)
        versions.setdefault(canonicalize_name(package["name"]), []).append(package)
    for name, entries in sorted(versions.items()):
        for entry in entries:
            forks = entry.get("resolution-markers", [])
            marker = " or ".join(f"({m})" for m in forks) if len(entries) > 1 and forks else None
            imported.constraints.append(_pin(name, str(entry["version"]), marker))
    _wishes_from_project(imported, project, [])
    if imported.requirements == [] and not project.get("project", {}).get("dependencies"):
        imported.notes.append("uv.lock without [project].dependencies: list what to lock in requirements")
    return imported


def from_pylock(path: Path, project: dict[str, Any]) -> Imported:
    """PEP 751 pylock.toml: every package's version as a constraint (with its marker)."""
    document = _load_toml(path)
    imported = Imported(path, pins_from_lock=True)
    pins = []
    for package in document.get("packages", []):
        if "version" not in package or "directory" in package or "vcs" in package:
            imported.not_handled.append(f"{package.get('name', '?')} (not an index package)")
            continue
        if index := package.get("index"):
            imported.add_index(str(index), primary=True)
        pins.append(_pin(package["name"], str(package["version"]), package.get("marker")))
    imported.constraints.extend(pins)
    _wishes_from_project(imported, project, pins)
    if python := document.get("requires-python"):
        imported.notes.append(f"pylock.toml requires Python {python}")
    return imported


def from_poetry_lock(path: Path, project: dict[str, Any]) -> Imported:
    """poetry.lock: the main group's versions as constraints; wishes from [project] or [tool.poetry]."""
    document = _load_toml(path)
    imported = Imported(path, pins_from_lock=True)
    pins = []
    for package in document.get("package", []):
        groups = package.get("groups") or [package.get("category", "main")]
        source = package.get("source", {})
        if source.get("type") in ("directory", "file", "git", "url"):
            imported.not_handled.append(f"{package['name']} ({source['type']} source)")
            continue
        if source.get("type") == "legacy" and source.get("url"):
            imported.add_index(str(source["url"]))
        pin = _pin(package["name"], str(package["version"]), package.get("markers") if isinstance(
            package.get("markers"), str) else None)  # fmt: skip
        if "main" in groups:
            pins.append(pin)
        imported.constraints.append(pin)
    poetry_deps = project.get("tool", {}).get("poetry", {}).get("dependencies", {})
    wishes = [_poetry_requirement(n, v) for n, v in poetry_deps.items() if canonicalize_name(n) != "python"]
    _wishes_from_project(imported, project, [w for w in wishes if w] or pins)
    return imported


def _poetry_requirement(name: str, value: Any) -> str | None:
    """A [tool.poetry.dependencies] entry as PEP 508 (the exact versions come from poetry.lock anyway)."""
    version = value.get("version", "*") if isinstance(value, dict) else value
    if not isinstance(version, str):
        return None
    version = version.strip()
    if version in ("", "*"):
        return name
    if version[0] in "^~" and version[1:2] != "=":
        # ^1.2.3 and ~1.2.3 keep the first non-zero / the minor: the lock's constraints pin exactly, so the lower
        # bound is enough to say what is wanted.
        return f"{name}>={version[1:]}"
    if version[0].isdigit():
        return f"{name}=={version}"
    return f"{name}{version}"


# --- conda ------------------------------------------------------------------------------------------------------


def from_conda(path: Path) -> Imported:
    """environment.yml: conda packages under their PyPI names (lock.conda), its Python version, its pip section."""
    import yaml  # noqa: PLC0415  (only for conda files)

    try:
        document = yaml.safe_load(read_small_text(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportSourceError(f"cannot read {path}: {unreadable(exc)}") from exc
    except yaml.YAMLError as exc:
        raise ImportSourceError(f"cannot read {path}: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("dependencies", []), list):
        raise ImportSourceError(f"{path.name} is not a conda environment file (no dependencies list)")
    imported = Imported(path)
    entries = document.get("dependencies") or []
    translation = conda.translate([str(e) for e in entries if isinstance(e, (str, int, float))])
    imported.requirements.extend(translation.requirements)
    imported.python, imported.cuda = translation.python, translation.cuda
    imported.not_handled.extend(translation.not_handled)
    imported.notes.extend(translation.notes)
    for url in translation.extra_index_urls:
        imported.add_index(url)
    for entry in entries:
        if isinstance(entry, dict) and "pip" in entry:
            lines = entry["pip"] or []
            _pip_section(path, [str(line) for line in lines], imported)
    _pip_wins(imported, len(translation.requirements))
    return imported


def _pip_wins(imported: Imported, conda_count: int) -> None:
    """A package in both sections is installed by pip last in conda: its pip line is the one kept."""
    from_pip = {canonicalize_name(Requirement(r).name) for r in imported.requirements[conda_count:]}
    kept = [r for r in imported.requirements[:conda_count] if canonicalize_name(Requirement(r).name) not in from_pip]
    imported.requirements[:conda_count] = kept


def _pip_section(path: Path, lines: list[str], imported: Imported) -> None:
    """The pip section is requirements-file lines, relative to the environment file."""
    fake = path.with_name(f".{path.name}.pip-section")
    for number, line in enumerate(lines, start=1):
        where = f"{path.name} pip section, line {number}"
        if line.startswith("-"):
            _requirements_option(line, fake, where, imported, into_constraints=False, seen=(path.resolve(),))
            continue
        try:
            imported.requirements.append(str(Requirement(line)))
        except InvalidRequirement as exc:
            raise ImportSourceError(f"{where}: {line!r} is not a valid requirement") from exc


def is_pin(requirement: str) -> bool:
    """`name==1.2.3` (any marker): a requirement that admits exactly one version."""
    parsed = Requirement(requirement)
    return len(parsed.specifier) == 1 and bool(_PIN.match(str(parsed.specifier)))
