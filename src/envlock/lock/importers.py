"""Other tools' environment files read into what [tool.envlock] needs: requirements, exact pins, indexes.

Formats: pip's requirements files (with `-r`/`-c` includes, markers, hashes, index options), uv.lock, PEP 751
pylock.toml, poetry.lock, pdm.lock (with pyproject's [[tool.pdm.source]]), pipenv's Pipfile.lock and Pipfile, and a
conda environment.yml (its packages under their PyPI names, Python version and pip section).
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from envlock.errors import ImportSourceError
from envlock.fsutil import read_small_text, unreadable
from envlock.lock import conda
from envlock.lock.backend import build_system, is_buildable
from envlock.lock.credentials import redact
from envlock.lock.shapes import url_problem

# Looked for in this order when `envlock init` is given no --from: real locks before wish lists.
# Each tool's own lock before pylock.toml (which uv, PDM and pipenv export from theirs); a bare Pipfile after
# requirements.txt (often `pipenv requirements` output: exact pins).
SOURCES = (
    "uv.lock",
    "poetry.lock",
    "pdm.lock",
    "Pipfile.lock",
    "pylock.toml",
    "requirements.txt",
    "Pipfile",
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
    if name == "Pipfile":
        return from_pipfile(path)
    locks = {
        "uv.lock": from_uv_lock,
        "poetry.lock": from_poetry_lock,
        "pdm.lock": from_pdm_lock,
        "Pipfile.lock": from_pipfile_lock,
    }
    if name in locks:
        return locks[name](path, project)
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
    local = _local_package(directory, value, where, imported, shown=f"-e {value}")
    if local is not None:
        (imported.constraints if into_constraints else imported.requirements).append(local)


def _local_package(directory: Path, value: str, where: str, imported: Imported, *, shown: str) -> str | None:
    """A package directory inside the project: `name @ file:PATH` when its [project] names it; the project itself
    (a note) and a package whose name only its build backend knows (not handled) give None."""
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
            f"{where}: {shown} is the project itself: installed from the mounted code with the metadata its "
            f"build backend ({build_system(document).backend.removesuffix(':__legacy__')}) gives"
        )
        return None
    if not isinstance(name, str) or "build-system" not in document or re.match(r"^[a-z+]+://", value):
        imported.not_handled.append(
            f"{shown} ({where}: a package inside the project whose name only its build backend knows: add "
            f"`NAME @ file:{value.removeprefix('file:')}` to [tool.envlock] requirements)"
        )
        return None
    relative = value.removeprefix("file:").rstrip("/")
    return f"{name} @ file:{relative}"


# --- lock files -------------------------------------------------------------------------------------------------


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(read_small_text(path))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and TOMLDecodeError are ValueErrors
        raise ImportSourceError(f"cannot read {path}: {unreadable(exc)}") from exc
    except RecursionError as exc:  # tomllib recurses once per nested array or inline table
        raise ImportSourceError(f"cannot read {path}: its tables or arrays are nested too deeply") from exc


def _dig(document: Any, *keys: str) -> Any:
    """document[k1][k2]… or None where a level is missing or not a table (pyproject.toml is not checked yet)."""
    for key in keys:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def _wishes_from_project(imported: Imported, project: dict[str, Any], fallback: list[str]) -> None:
    """A lock's project says what it wants in [project].dependencies; without them, every pin is a wish."""
    table = _dig(project, "project") or {}
    dynamic = table.get("dynamic")
    if isinstance(table.get("dependencies"), list) and not (isinstance(dynamic, list) and "dependencies" in dynamic):
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
    if imported.requirements == [] and not _dig(project, "project", "dependencies"):
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
    poetry_deps = _dig(project, "tool", "poetry", "dependencies")
    poetry_deps = poetry_deps if isinstance(poetry_deps, dict) else {}
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


# --- pipenv: Pipfile.lock and Pipfile ---------------------------------------------------------------------------

_VCS = ("git", "hg", "svn", "bzr")
_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
_ENV_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_BARE_ENV = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")  # pipenv expands $VAR as well as ${VAR}; envlock only ${VAR}
_MAJOR_MINOR = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)?$")
# Pipfile keys that are PEP 508 marker variables: `sys_platform = "== 'linux'"` means `sys_platform == 'linux'`.
_PIPFILE_MARKERS = (
    "os_name", "sys_platform", "platform_machine", "platform_python_implementation", "platform_release",
    "platform_system", "platform_version", "python_version", "python_full_version", "implementation_name",
    "implementation_version",
)  # fmt: skip
_OLD_PYPI = "https://pypi.python.org/simple"
PIPFILE_SPEC = 6  # what pipenv has written since 2018; an older one has the same shape


def _load_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(read_small_text(path))
    except json.JSONDecodeError as exc:
        raise ImportSourceError(f"{path.name}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportSourceError(f"cannot read {path}: {unreadable(exc)}") from exc
    except RecursionError as exc:
        raise ImportSourceError(f"cannot read {path}: its tables or arrays are nested too deeply") from exc
    if not isinstance(document, dict):
        raise ImportSourceError(f"{path.name} is not a Pipfile.lock (a JSON object with _meta and default)")
    return document


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImportSourceError(f"{where} must be a table, not {type(value).__name__}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ImportSourceError(f"{where} must be a non-empty string, not {value!r:.60}")
    return value.strip()


def _name(value: Any, where: str) -> str:
    name = _text(value, where)
    if not _NAME.match(name):
        raise ImportSourceError(f"{where}: {name!r:.60} is not a package name")
    return name


def _checked(requirement: str, where: str) -> str:
    """A PEP 508 line the source spelled out, parsed here so that a bad one names its key."""
    try:
        return str(Requirement(requirement))
    except InvalidRequirement as exc:
        raise ImportSourceError(
            f"{where}: {requirement!r:.80} is not a valid requirement ({str(exc).splitlines()[0]})"
        ) from exc


def _locked_pin(name: str, version: Any, marker: Any, where: str, *, operator: str = "") -> str:
    """`name==version[ ; marker]` from a lock's entry, each part checked (`operator`: what the lock writes before
    the version, pipenv's `==`)."""
    version = _text(version, f"{where}.version")
    if not version.startswith(operator) or version.startswith(f"{operator}="):
        raise ImportSourceError(f"{where}.version: {version!r:.60} is not one exact version ({operator}X)")
    version = version.removeprefix(operator).strip()
    marker = _text(marker, f"{where}.marker") if marker is not None else None
    pin = _pin(name, version, marker)
    if not is_pin(_checked(pin, where)):
        raise ImportSourceError(f"{where}.version: {version!r:.60} is not one exact version")
    return pin


def _python_version(value: Any, where: str) -> str:
    match = _MAJOR_MINOR.match(_text(value, where))
    if not match:
        raise ImportSourceError(f"{where}: {value!r:.40} is not a Python version like 3.11")
    return f"{match.group(1)}.{match.group(2)}"


def _index_source(imported: Imported, source: Any, where: str, *, primary: bool) -> None:
    """One `[[source]]` (pipenv) or `[[tool.pdm.source]]`: an index, its credentials kept in the environment."""
    source = _table(source, where)
    name = str(source.get("name", "index"))
    url = _BARE_ENV.sub(r"${\1}", _text(source.get("url"), f"{where}.url"))
    url = _credentials_to_environment(url, name, where, imported)
    if problem := url_problem(url):
        raise ImportSourceError(f"{where}.url: {problem.replace(repr(url), repr(redact(url)))}")
    if source.get("verify_ssl") is False:
        imported.notes.append(
            f"{where}: the {name!r} index says verify_ssl = false: envlock verifies its TLS certificate (add the "
            "index's CA to the host's trust store if it is self-signed)"
        )
    imported.add_index(PYPI if url.rstrip("/") == _OLD_PYPI else url, primary=primary)


def _credentials_to_environment(url: str, source: str, where: str, imported: Imported) -> str:
    """A password (or token) written into an index URL is not copied on: the URL gets `${VAR}` in its place."""
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError as exc:
        raise ImportSourceError(f"{where}.url: {redact(url)!r} is not a URL ({exc})") from exc
    secret = password if password is not None else user
    if not secret or _ENV_REFERENCE.fullmatch(secret):
        return url
    variable = re.sub(r"[^A-Z0-9]+", "_", source.upper()).strip("_") or "INDEX"
    variable = f"{variable}_{'PASSWORD' if password is not None else 'TOKEN'}"
    userinfo = f"{user}:${{{variable}}}" if password is not None else f"${{{variable}}}"
    host = parts.netloc.rpartition("@")[2]
    imported.notes.append(
        f"{where}: the {source!r} index URL has a {'password' if password is not None else 'token'} written in it; "
        f"it is not copied into pyproject.toml, which says ${{{variable}}} instead: export {variable}=… before "
        "`envlock lock`"
    )
    return urlunsplit((parts.scheme, f"{userinfo}@{host}", parts.path, parts.query, parts.fragment))


def _pipenv_meta(path: Path, meta: dict[str, Any], imported: Imported, *, sources_key: str) -> None:
    """Indexes (the first source is the primary one, as in pipenv) and the Python version."""
    sources = meta.get(sources_key, [])
    if not isinstance(sources, list):
        raise ImportSourceError(f"{path.name}: {sources_key} must be a list of sources")
    for index, source in enumerate(sources):
        _index_source(imported, source, f"{path.name}: {sources_key}[{index}]", primary=index == 0)
    requires = _table(meta.get("requires", {}), f"{path.name}: requires")
    for key in ("python_version", "python_full_version"):
        if key in requires:
            imported.python = _python_version(requires[key], f"{path.name}: requires.{key}")
            break


def _not_an_index_package(entry: dict[str, Any]) -> str | None:
    """What a Pipfile or pdm.lock entry is instead of an index package (a VCS, a file or URL, a path), or None."""
    for key in (*_VCS, "file", "url", "path"):
        if key in entry:
            return key
    return None


def _local_or_not_handled(path: Path, name: str, entry: dict[str, Any], where: str, imported: Imported) -> str | None:
    """A path entry is a local package by the `-e ./sub` rules; a VCS checkout or a file/URL is not handled."""
    kind = _not_an_index_package(entry)
    if kind == "path":
        value = _text(entry["path"], f"{where}.path")
        value = value if value.startswith((".", "/")) else f"./{value}"
        if not (path.parent / value).resolve().is_relative_to(path.parent.resolve()):
            imported.not_handled.append(f"{name} ({where}: {value}, a folder outside the project)")
            return None
        return _local_package(path.parent, value, where, imported, shown=f"{name} = {{path = {value!r}}}")
    imported.not_handled.append(f"{name} ({where}: a {kind} source; envlock locks index packages with per-file hashes)")
    return None


def from_pipfile_lock(path: Path, project: dict[str, Any]) -> Imported:
    """Pipfile.lock: the default section's pins as constraints (and develop's, which bound but never add); wishes
    from [project], else the Pipfile beside it, else the default pins themselves."""
    document = _load_json(path)
    imported = Imported(path, pins_from_lock=True)
    meta = _table(document.get("_meta", {}), f"{path.name}: _meta")
    spec = meta.get("pipfile-spec", PIPFILE_SPEC)
    if not isinstance(spec, int) or isinstance(spec, bool) or not 1 <= spec <= PIPFILE_SPEC:
        raise ImportSourceError(
            f"{path.name}: pipfile-spec {spec!r:.20} is not one envlock reads (1 to {PIPFILE_SPEC})",
            hint="re-lock it with `pipenv lock`, or import another file with --from FILE",
        )
    _pipenv_meta(path, meta, imported, sources_key="sources")
    pins: dict[str, str] = {}  # name → pin
    local: list[str] = []
    for key, value in _table(document.get("default", {}), f"{path.name}: default").items():
        where = f"{path.name}: default.{key}"
        name, entry = _name(key, where), _table(value, where)
        if _not_an_index_package(entry):
            if found := _local_or_not_handled(path, name, entry, where, imported):
                local.append(found)
            continue
        pins[canonicalize_name(name)] = _locked_pin(
            name, entry.get("version"), entry.get("markers"), where, operator="=="
        )
    develop = _table(document.get("develop", {}), f"{path.name}: develop")
    develop_pins = []
    for key, value in develop.items():
        where = f"{path.name}: develop.{key}"
        name, entry = _name(key, where), _table(value, where)
        if not _not_an_index_package(entry) and canonicalize_name(name) not in pins:  # default's pin wins
            develop_pins.append(_locked_pin(name, entry.get("version"), entry.get("markers"), where, operator="=="))
    imported.constraints.extend([*pins.values(), *develop_pins])
    if develop:
        imported.notes.append(
            f"{path.name}: the develop section ({len(develop)} packages) is not installed; its pins only bound "
            "versions (constraints), as other locks' dev groups do: list a package in requirements to install it"
        )
    if others := sorted(k for k in document if k not in ("_meta", "default", "develop")):
        imported.notes.append(f"{path.name}: {', '.join(others)} left out (pipenv categories other than default)")
    pipfile = path.with_name("Pipfile")
    if pipfile.is_file():
        wishes = _pipfile_packages(pipfile, _load_toml(pipfile), Imported(pipfile), bare=False)
        if unpinned := sorted({n for n in map(_requirement_name, wishes) if n not in pins}):
            imported.notes.append(
                f"Pipfile names {', '.join(unpinned)}, which {path.name} does not pin (it is older than the Pipfile: "
                "`pipenv lock` brings it up to date); `envlock lock` resolves them afresh"
            )
    else:
        wishes = list(pins.values())
    _wishes_from_project(imported, project, [*wishes, *local])
    return imported


def from_pipfile(path: Path) -> Imported:
    """A Pipfile without its lock: [packages] are the wishes (a wish list, like requirements.txt)."""
    document = _load_toml(path)
    imported = Imported(path)
    _pipenv_meta(path, document, imported, sources_key="source")
    imported.requirements.extend(_pipfile_packages(path, document, imported, bare=True))
    if dev := document.get("dev-packages"):
        imported.notes.append(
            f"{path.name}: dev-packages ({len(dev) if isinstance(dev, dict) else '?'}) are not installed: list one "
            "in requirements to install it"
        )
    return imported


def _pipfile_packages(path: Path, document: dict[str, Any], imported: Imported, *, bare: bool) -> list[str]:
    """[packages] as PEP 508. Without the lock (`bare`) path entries become local packages and VCS or file
    entries are listed as not handled; beside the lock, the lock's own entries say that."""
    wishes = []
    for key, value in _table(document.get("packages", {}), f"{path.name}: packages").items():
        where = f"{path.name}: packages.{key}"
        name = _name(key, where)
        if isinstance(value, str):
            wishes.append(_checked(f"{name}{_pipfile_version(value)}", where))
            continue
        entry = _table(value, where)
        if _not_an_index_package(entry):
            if bare and (found := _local_or_not_handled(path, name, entry, where, imported)):
                wishes.append(found)
            continue
        extras = entry.get("extras", [])
        if not isinstance(extras, list) or not all(isinstance(e, str) for e in extras):
            raise ImportSourceError(f"{where}.extras must be a list of names")
        markers = [f"({_text(entry['markers'], f'{where}.markers')})"] if "markers" in entry else []
        markers += [f"{key} {_text(entry[key], f'{where}.{key}')}" for key in _PIPFILE_MARKERS if key in entry]
        version = _pipfile_version(_text(entry.get("version", "*"), f"{where}.version"))
        marker = f" ; {' and '.join(markers)}" if markers else ""
        wishes.append(_checked(f"{name}{'[' + ','.join(extras) + ']' if extras else ''}{version}{marker}", where))
    return wishes


def _requirement_name(requirement: str) -> str:
    return str(canonicalize_name(Requirement(requirement).name))


def _pipfile_version(value: str) -> str:
    """pipenv's version: `*` is any, a bare `1.2` means `==1.2`."""
    value = value.strip()
    if value in ("", "*"):
        return ""
    return f"=={value}" if value[0].isdigit() else value


# --- PDM: pdm.lock and [[tool.pdm.source]] ----------------------------------------------------------------------

# lock_version 4.0 to 4.5 (PDM 2): 4.4.1 and later carry each package's groups and marker (the inherit_metadata
# strategy, PDM's default since 2.11); earlier ones list the groups only in [metadata].
_PDM_LOCK_VERSION = re.compile(r"^4\.[0-5](\.\d+)?$")


def from_pdm_lock(path: Path, project: dict[str, Any]) -> Imported:
    """pdm.lock: every package's version (and marker) as a constraint; wishes from [project], else the default
    group's pins; indexes from pyproject's [[tool.pdm.source]]."""
    document = _load_toml(path)
    metadata = _table(document.get("metadata", {}), f"{path.name}: metadata")
    version = metadata.get("lock_version")
    if not isinstance(version, str) or not _PDM_LOCK_VERSION.match(version):
        raise ImportSourceError(
            f"{path.name}: lock_version {version!r:.20} is not one envlock reads (4.0 to 4.5, written by PDM 2)",
            hint="re-lock it with PDM 2 (`pdm lock`), or import another file with --from FILE",
        )
    imported = Imported(path, pins_from_lock=True)
    packages = document.get("package", [])
    if not isinstance(packages, list):
        raise ImportSourceError(f"{path.name}: package must be an array of tables ([[package]])")
    lock_groups = metadata.get("groups", ["default"])
    if not isinstance(lock_groups, list) or not all(isinstance(g, str) for g in lock_groups):
        raise ImportSourceError(f"{path.name}: metadata.groups must be a list of group names")
    per_package = any(isinstance(p, dict) and "groups" in p for p in packages)
    default: list[str] = []
    other_groups: set[str] = set()
    for index, value in enumerate(packages):
        where = f"{path.name}: package[{index}]"
        package = _table(value, where)
        name = _name(package.get("name"), f"{where}.name")
        where = f"{path.name}: package {name}"
        groups = package.get("groups", ["default"])
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise ImportSourceError(f"{where}.groups must be a list of group names")
        if _not_an_index_package(package):
            found = _local_or_not_handled(path, name, package, where, imported) if "default" in groups else None
            default += [found] if found else []
            continue
        pin = _locked_pin(name, package.get("version"), package.get("marker"), where)
        imported.constraints.append(pin)
        if "default" in groups:
            default.append(pin)
        other_groups.update(g for g in groups if g != "default")
    imported.constraints = list(dict.fromkeys(imported.constraints))  # a package with extras is listed again
    if per_package and other_groups:
        imported.notes.append(
            f"{path.name}: not installed: the {', '.join(sorted(other_groups))} group(s); their pins only bound "
            "versions (constraints), as other locks' dev groups do: list a package in requirements to install it"
        )
    if not per_package and set(lock_groups) - {"default"}:
        imported.notes.append(
            f"{path.name} (lock_version {version}) does not say which of its groups ({', '.join(lock_groups)}) each "
            "package is in: without [project] dependencies every pin is a wish"
        )
    _wishes_from_project(imported, project, list(dict.fromkeys(default)))
    _pdm_sources(project, imported)
    return imported


def _pdm_sources(project: dict[str, Any], imported: Imported) -> None:
    """[[tool.pdm.source]]: a source named `pypi` replaces PyPI as the primary index; the others are extra."""
    sources = _dig(project, "tool", "pdm", "source") or []
    if not isinstance(sources, list):
        raise ImportSourceError("pyproject.toml: tool.pdm.source must be an array of tables ([[tool.pdm.source]])")
    for index, source in enumerate(sources):
        where = f"pyproject.toml: tool.pdm.source[{index}]"
        if _table(source, where).get("type", "index") == "find_links":
            imported.notes.append(f"{where}: a find_links source, ignored (envlock resolves against indexes only)")
            continue
        _index_source(imported, source, where, primary=source.get("name") == "pypi")
        if {"include_packages", "exclude_packages"} & set(source):
            imported.notes.append(
                f"{where}: include_packages / exclude_packages are not applied: envlock's resolver may take any "
                "package from this index; the lock's pins still decide the versions"
            )


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
    from_pip = {_requirement_name(r) for r in imported.requirements[conda_count:]}
    kept = [r for r in imported.requirements[:conda_count] if _requirement_name(r) not in from_pip]
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
