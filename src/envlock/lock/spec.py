"""The project's wishes: `[tool.envlock]` in pyproject.toml, validated once, every problem reported."""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from envlock.codecs import Codec, Problems, declared_path_problem, did_you_mean, each, field, project_path_problem
from envlock.engine.runtimes import RUNTIMES, RuntimeName
from envlock.errors import SpecError, UsageError
from envlock.fsutil import read_small_text, sha256_file, unreadable
from envlock.lock import recipes
from envlock.lock.backend import MetadataSource, default_backend, is_buildable
from envlock.lock.credentials import redact
from envlock.lock.localpackages import LocalPackage, local_packages, local_url_path
from envlock.lock.shapes import debian_package_problem, url_problem
from envlock.lock.targets import PLATFORMS, Platform
from envlock.paths import ProjectLayout

PYPROJECT = "pyproject.toml"
DEFAULT_INDEX = "https://pypi.org/simple"
# Bumped whenever the meaning of the inputs (and so of the input hash) changes.
INPUT_SCHEMA = 1

# The untracked files a run keeps copies of, in total, unless [tool.envlock] untracked-max-bytes says otherwise.
UNTRACKED_MAX_BYTES = 50_000_000
_IMAGE_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
_CUDA = re.compile(r"^(auto|cpu|\d+\.\d+)$")
_PYTHON = re.compile(r"^3\.\d+$")
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:\d+)?(/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ImportedFrom(Codec, nulls=False):
    """The file `envlock init` took the requirements or pins from, and its sha256 then (`lock` follows it).

    Written as `imported-from = {path = "FILE", sha256 = "…"}`.
    """

    path: str = field(check=project_path_problem, doc="the file, relative to the project")
    sha256: str = field(
        check=lambda value: None if _SHA256.match(value) else f"{value!r} must be 64 lowercase hex digits",
        doc="its sha256 when imported",
    )

    def changed(self, project_dir: Path) -> bool:
        """The file is gone or its bytes differ from what was imported."""
        file = project_dir / self.path
        return not file.is_file() or sha256_file(file) != self.sha256


def _image_name_problem(name: str) -> str | None:
    return None if _IMAGE_NAME.match(name) else f"{name!r} is not a valid image name (lowercase, digits, . _ - /)"


def _python_problem(python: str) -> str | None:
    return None if _PYTHON.match(python) else f'{python!r} must be a Python version like "3.11"'


def _platforms_problems(platforms: list[str]) -> list[str]:
    found = [] if platforms else ["needs at least one platform"]
    found += [
        f"unknown platform {platform!r}{did_you_mean(platform, PLATFORMS)}; supported: {', '.join(PLATFORMS)}"
        for platform in platforms
        if platform not in PLATFORMS
    ]
    return found + (["lists a platform twice"] if len(set(platforms)) != len(platforms) else [])


def _cuda_problem(cuda: str) -> str | None:
    return None if _CUDA.match(cuda) else f'{cuda!r} must be "auto", "cpu" or a version like "12.4"'


def _index_problem(url: str) -> str | None:
    """A URL's problem, its credentials never shown."""
    problem = url_problem(url)
    return problem.replace(repr(url), repr(redact(url))) if problem else None


def _registry_problem(registry: str) -> str | None:
    return None if _REGISTRY.match(registry) else f"{registry!r} must look like host[:port][/namespace]"


def _output_problem(declared: str) -> str | None:
    # "./out" and "out/" name the same folder; `..`, absolute paths and backslashes are refused (codecs' rule).
    if ".." in declared.split("/") or project_path_problem(posixpath.normpath(declared)):
        return f"{declared!r} must be a path inside the project"
    return None


def _runtime_problem(runtime: str) -> str | None:
    if runtime in RUNTIMES:
        return None
    return f"unknown runtime {runtime!r}{did_you_mean(runtime, RUNTIMES)}; supported: {', '.join(RUNTIMES)}"


class EnvlockKeys(Codec, nulls=False):
    """The keys of `[tool.envlock]`: each one's type, meaning and check, declared once (the reference lists them
    from here; reading, unknown keys and each value's problems follow from here). An absent key reads as None;
    parse_spec fills in the defaults and checks what needs the rest of pyproject.toml (requirements, extras,
    groups, the Python a base recipe carries)."""

    name: str | None = field(
        default=None, check=_image_name_problem, doc="the image name (default: the project's name)"
    )
    python: str | None = field(
        default=None, check=_python_problem, doc='the Python version, "3.11" (a recipe base fixes it)'
    )
    requirements: list[str] | None = field(default=None, doc="what to lock (default: [project] dependencies)")
    constraints: list[str] | None = field(default=None, doc="exact pins that bound versions, never add packages")
    extras: list[str] | None = field(default=None, doc="[project.optional-dependencies] extras to lock too")
    groups: list[str] | None = field(default=None, doc="[dependency-groups] (PEP 735) to lock too")
    platforms: list[str] | None = field(
        default=None, check=_platforms_problems, doc='platforms to lock, default ["linux/amd64"]'
    )
    base: str | None = field(
        default=None, check=recipes.check_base, doc="a base recipe name, or an image pinned by digest (repo@sha256:…)"
    )
    system_packages: list[str] | None = field(
        default=None, check=each(debian_package_problem), doc="Debian packages to install in the image"
    )
    cuda: str | None = field(
        default=None, check=_cuda_problem, doc='"auto" (from the wheels), "cpu", or a CUDA version like "12.4"'
    )
    index_url: str | None = field(
        default=None, check=_index_problem, quiet=True, doc="the package index (default: PyPI)"
    )
    extra_index_urls: list[str] | None = field(
        default=None, check=each(_index_problem), quiet=True, doc="more package indexes"
    )
    registry: str | None = field(
        default=None, check=_registry_problem, doc="where images and evidence are pushed: host[:port][/namespace]"
    )
    outputs: list[str] | None = field(
        default=None, check=each(_output_problem), doc="files or folders each run produces (hashed per run)"
    )
    inputs: list[str] | None = field(
        default=None, check=each(declared_path_problem), doc="files or folders each run reads (hashed before it)"
    )
    params: list[str] | None = field(
        default=None, check=each(declared_path_problem), doc="hyperparameter files recorded key by key"
    )
    untracked_max_bytes: int | None = field(
        default=None,
        check=lambda cap: None if cap >= 0 else f"{cap!r} must be a number of bytes (>= 0)",
        doc="bytes of untracked files a run keeps, in total",
    )
    runtime: str | None = field(
        default=None, check=_runtime_problem, doc="what runs the image: docker, podman or charliecloud"
    )
    imported_from: ImportedFrom | None = field(default=None, doc="the lock `envlock init` imported (its hash)")


def spec_keys() -> list[tuple[str, str, str]]:
    """Every `[tool.envlock]` key as (key, type in words, one-line description), in declaration order."""
    return [(d.key, d.type_name.removesuffix(" or null"), d.spec.doc) for d in EnvlockKeys.declared()]


@dataclass(frozen=True)
class Spec:
    """What the user asked for, validated."""

    project_dir: Path
    name: str
    python: str
    requirements: tuple[str, ...]
    platforms: tuple[Platform, ...]
    base: str
    system_packages: tuple[str, ...]
    cuda: str
    index_url: str
    extra_index_urls: tuple[str, ...]
    registry: str | None
    outputs: tuple[str, ...] = ()  # files or directories a run produces, relative to the project; hashed per run
    # Files or directories a run reads (data): hashed before each run, compared by reproduce. Not a lock input:
    # changing them never makes the lock stale.
    run_inputs: tuple[str, ...] = ()
    # Hyperparameter files (YAML, JSON, TOML) a run records key by key, with their sha256.
    params: tuple[str, ...] = ()
    untracked_max_bytes: int = UNTRACKED_MAX_BYTES  # untracked files saved with a run, in total
    # Exact pins taken over from another tool's lock (`envlock init`): they bound versions, never add packages.
    constraints: tuple[str, ...] = ()
    # The project's own package and path dependencies inside it: installed from the mounted code.
    local_packages: tuple[LocalPackage, ...] = ()
    runtime: RuntimeName = "docker"  # what runs the image (not an input of the lock: the same image either way)
    # Not an input either: `lock --check` compares the file itself, and `lock` re-imports it when it moved.
    imported_from: ImportedFrom | None = None

    @property
    def lock_path(self) -> Path:
        """Where this project's lock lives."""
        return ProjectLayout(self.project_dir).lock

    def run_inputs_with(self, given: list[str] | None) -> tuple[str, ...]:
        """What a run (`run`, `submit`) reads: `inputs = [...]` and then the `--input` paths given, each checked and
        normalized, once each."""
        return tuple(dict.fromkeys([*self.run_inputs, *(check_input(path) for path in given or [])]))

    def inputs(self) -> dict[str, Any]:
        """Everything that decides the resolution and the image, normalized, credentials removed."""
        inputs = {
            "schema": INPUT_SCHEMA,
            "python": self.python,
            "requirements": sorted(str(Requirement(r)) for r in self.requirements),
            "platforms": sorted(self.platforms),
            "base": self.base,
            # A recipe's content is an input too: editing base-images/NAME.toml makes the lock stale.
            "base-recipe": None if recipes.is_image_reference(self.base) else recipes.load_recipe(self.base).sha256,
            "system-packages": sorted(self.system_packages),
            "cuda": self.cuda,
            "index-url": redact(self.index_url),
            "extra-index-urls": [redact(u) for u in self.extra_index_urls],
        }
        # Present only when used, so that the input hash of a project without them is what it always was.
        if self.constraints:
            inputs["constraints"] = sorted(str(Requirement(c)) for c in self.constraints)
        if self.local_packages:
            inputs["local-packages"] = [p.identity() for p in self.local_packages]
        return inputs

    def input_hash(self) -> str:
        """sha256 over the normalized inputs: what `lock --check` compares without resolving."""
        blob = json.dumps(self.inputs(), sort_keys=True, separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()


class _SpecProblems(Problems):
    """The problems of one pyproject.toml, each named with the line of its key; `path` locates path dependencies."""

    def __init__(self, path: Path, text: str) -> None:
        super().__init__(path.name, _locator(text))
        self.path = path


def _locator(text: str) -> Callable[[str], int | None]:
    """The line of a dotted key in pyproject.toml's text; for a key inside an inline table (`imported-from.path`),
    the line of the table's own key."""
    lines = text.splitlines()

    def line_of(table: list[str], key: str) -> int | None:
        # The line where a key is written, found by reading the text (tomllib keeps no positions).
        header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(map(re.escape, table)) + r"\s*\]")
        assignment = re.compile(r"^\s*\"?" + re.escape(key) + r"\"?\s*=")
        inside = not table
        for number, line in enumerate(lines, start=1):
            if re.match(r"^\s*\[", line):
                inside = bool(header.match(line))
                continue
            if inside and assignment.match(line):
                return number
        return None

    def locate(dotted: str) -> int | None:
        parts = dotted.split(".")
        while parts:
            *table, key = parts
            if (number := line_of(table, key)) is not None:
                return number
            parts = table
        return None

    return locate


def check_input(path: str) -> str:
    """A declared input from the command line, normalized; a UsageError when it leaves the project."""
    if problem := declared_path_problem(path):
        raise UsageError(f"--input {problem}", hint="inputs are mounted under /work, where the project is")
    return path.rstrip("/")


def _string_list(value: Any, key: str, problems: _SpecProblems) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.add(key, "must be a list of strings")
        return []
    return list(value)


def _requirement_list(value: Any, key: str, problems: _SpecProblems) -> list[str]:
    """A list of PEP 508 requirements from an index (a direct URL cannot be locked per file)."""
    valid = []
    for requirement in _string_list(value, key, problems):
        try:
            parsed = Requirement(requirement)
        except InvalidRequirement as exc:
            reason = str(exc).splitlines()[0]
            problems.add(key, f"{requirement!r} is not a valid requirement ({reason})")
            continue
        if parsed.url and local_url_path(parsed, problems.path.parent) is not None:
            valid.append(requirement)  # a package inside the project: set aside as a local package
            continue
        if parsed.url:
            problems.add(key, f"{requirement!r} is a direct URL; envlock locks index packages with per-file hashes")
            continue
        valid.append(requirement)
    return valid


def _group_requirements(
    groups: dict[str, Any], name: str, problems: _SpecProblems, seen: tuple[str, ...] = ()
) -> list[str]:
    """PEP 735 dependency group, with `{include-group = …}` followed."""
    normalized = {canonicalize_name(k): v for k, v in groups.items()}
    key = canonicalize_name(name)
    if key not in normalized:
        problems.add("tool.envlock.groups", f"no dependency group {name!r}{did_you_mean(name, list(groups))}")
        return []
    if key in seen:
        problems.add("tool.envlock.groups", f"dependency group {name!r} includes itself")
        return []
    out: list[str] = []
    if not isinstance(normalized[key], list):
        problems.add(f"dependency-groups.{name}", "must be a list of requirements and {include-group = …} tables")
        return []
    for item in normalized[key]:
        if isinstance(item, str):
            out += _requirement_list([item], f"dependency-groups.{name}", problems)
        elif isinstance(item, dict) and isinstance(item.get("include-group"), str):
            out += _group_requirements(groups, item["include-group"], problems, (*seen, key))
        else:
            problems.add(f"dependency-groups.{name}", f"{item!r} is neither a requirement nor {{include-group = …}}")
    return out


def load_spec(project_dir: Path, backend: MetadataSource | None = None) -> Spec:
    """Read and validate the project's pyproject.toml; raise one SpecError listing every problem.

    The project's build backend (`backend`, by default the real one) answers for metadata only it knows.
    """
    path = project_dir / PYPROJECT
    try:
        text = read_small_text(path)
    except FileNotFoundError:
        raise SpecError(
            f"no {PYPROJECT} in {project_dir}",
            hint="run envlock inside your project, or point at it with --project DIR",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(
            f"cannot read {path}: {unreadable(exc)}", hint=f"{PYPROJECT} must be a UTF-8 text file in the project"
        ) from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path} is not valid TOML: {exc}", hint="fix the syntax at the line and column shown") from exc
    except RecursionError as exc:  # tomllib recurses once per nested array or inline table
        raise SpecError(
            f"{path} is not valid TOML for envlock: arrays or tables nested too deeply",
            hint="flatten the deeply nested value",
        ) from exc
    return parse_spec(document, project_dir, path, text, backend or default_backend())


def _table(parent: dict[str, Any], key: str, dotted: str, problems: _SpecProblems) -> dict[str, Any]:
    """A sub-table, or an empty one (with a problem) when the key holds something else."""
    value = parent.get(key, {})
    if not isinstance(value, dict):
        problems.add(dotted, "must be a table")
        return {}
    return value


def _requirements(document: dict[str, Any], keys: EnvlockKeys, problems: _SpecProblems, packaged: bool) -> list[str]:
    """[tool.envlock] requirements, else [project].dependencies; then the chosen extras and groups.

    `packaged`: the project is a package its build backend describes, whose dependencies come from there.
    """
    project = _table(document, "project", "project", problems)
    if keys.requirements is not None:
        requirements = _requirement_list(keys.requirements, "tool.envlock.requirements", problems)
    elif "dependencies" in project:
        requirements = _requirement_list(project["dependencies"], "project.dependencies", problems)
    else:
        requirements = []
        dynamic = project.get("dynamic", [])
        if isinstance(dynamic, list) and "dependencies" in dynamic and not packaged:
            problems.add("project.dependencies", "is dynamic; list what to lock in [tool.envlock] requirements")
    optional = _table(project, "optional-dependencies", "project.optional-dependencies", problems)
    for extra in keys.extras or []:
        if extra in optional:
            requirements += _requirement_list(optional[extra], f"project.optional-dependencies.{extra}", problems)
        else:
            close = did_you_mean(extra, list(optional))
            problems.add("tool.envlock.extras", f"no optional-dependencies {extra!r}{close}")
    groups = _table(document, "dependency-groups", "dependency-groups", problems)
    for group in keys.groups or []:
        requirements += _group_requirements(groups, group, problems)
    if not requirements and not problems.items and not packaged:
        problems.add("project.dependencies", "nothing to lock: list packages in [project] dependencies")
    return requirements


def _base_and_python(keys: EnvlockKeys, problems: _SpecProblems) -> tuple[str, str]:
    """The base, and the Python it carries (a recipe fixes it; an image base needs it stated)."""
    base = keys.base if keys.base is not None and recipes.check_base(keys.base) is None else recipes.DEFAULT_BASE
    recipe = None if recipes.is_image_reference(base) else recipes.load_recipe(base)
    python = keys.python or (recipe.python if recipe else "3.11")
    if recipe and python != recipe.python and _python_problem(python) is None:
        problems.add("tool.envlock.python", f"base {recipe.name!r} carries Python {recipe.python}, not {python}")
    return base, python


def parse_spec(
    document: dict[str, Any], project_dir: Path, path: Path, text: str = "", backend: MetadataSource | None = None
) -> Spec:
    """Validate a parsed pyproject document into a Spec, or raise one SpecError listing every problem.

    `backend` answers for packages only their build backend can describe (setup.py, Poetry, dynamic metadata);
    without one, such a package is not a local package.
    """
    problems = _SpecProblems(path, text)
    keys = _envlock_keys(document, path, problems)
    requirements = _requirements(document, keys, problems, is_buildable(project_dir, document))
    constraints = _requirement_list(keys.constraints or [], "tool.envlock.constraints", problems)
    local, own = local_packages(document, project_dir, requirements, backend)
    name = _image_name(document, keys, project_dir, problems, own.name if own else None)
    requirements = _without_local(requirements, local, own)
    base, python = _base_and_python(keys, problems)
    _raise_problems(problems, path)
    return Spec(
        project_dir=project_dir,
        name=name,
        python=python,
        requirements=tuple(requirements),
        platforms=tuple(p for p in PLATFORMS if p in (keys.platforms or ["linux/amd64"])),
        base=base,
        system_packages=tuple(keys.system_packages or ()),
        cuda=keys.cuda or "auto",
        index_url=keys.index_url or DEFAULT_INDEX,
        extra_index_urls=tuple(keys.extra_index_urls or ()),
        registry=keys.registry,
        outputs=tuple(keys.outputs or ()),
        run_inputs=tuple(p.rstrip("/") for p in keys.inputs or ()),
        params=tuple(keys.params or ()),
        untracked_max_bytes=UNTRACKED_MAX_BYTES if keys.untracked_max_bytes is None else keys.untracked_max_bytes,
        constraints=tuple(constraints),
        local_packages=local,
        runtime=cast("RuntimeName", keys.runtime or "docker"),  # checked against RUNTIMES by its declaration
        imported_from=keys.imported_from,
    )


def _envlock_keys(document: dict[str, Any], path: Path, problems: _SpecProblems) -> EnvlockKeys:
    """[tool.envlock] read by its declaration (every problem noted); it must be a table, raised at once: nothing else
    can be read."""
    tool = document.get("tool", {})
    if not isinstance(tool, dict):
        raise SpecError(f"{path.name}: tool must be a table", hint="write it as [tool.envlock]")
    table = tool.get("envlock", {})
    if not isinstance(table, dict):
        raise SpecError(f"{path.name}: tool.envlock must be a table", hint="write it as [tool.envlock]")
    return EnvlockKeys.decode(table, problems, "tool.envlock")


def _image_name(
    document: dict[str, Any], keys: EnvlockKeys, project_dir: Path, problems: _SpecProblems, package: str | None
) -> str:
    """tool.envlock.name, by default the project's name (its package's, else its folder's) as a valid image name."""
    if keys.name is not None:
        return keys.name
    project = document.get("project", {})
    fallback = package or project_dir.resolve().name
    project_name = str(project.get("name", fallback) if isinstance(project, dict) else "")
    name = re.sub(r"[^a-z0-9._-]+", "-", project_name.lower()).strip("-._") or "envlock-project"
    if problem := _image_name_problem(name):
        problems.add("tool.envlock.name", problem)
    return name


def _raise_problems(problems: _SpecProblems, path: Path) -> None:
    """One SpecError listing every problem found, if any was."""
    if problems.items:
        count = len(problems.items)
        raise SpecError(
            f"{path.name} has {count} problem{'s' if count > 1 else ''}",
            hint="fix the keys listed above",
            details=tuple(problems.items),
        )


def _without_local(requirements: list[str], local: tuple[LocalPackage, ...], own: LocalPackage | None) -> list[str]:
    """Local packages come from the mounted code: their own dependencies are resolved instead of them."""
    names = {canonicalize_name(p.name) for p in local}
    kept = [r for r in requirements if canonicalize_name(Requirement(r).name) not in names]
    for package in local:
        if package == own and not package.backend:
            continue  # the project itself: its dependencies are the requirements already (or were overridden)
        # A package only its backend describes (setup.py, Poetry, dynamic dependencies): its own tool would install
        # its dependencies with it, as pip does for `-e .`.
        kept += [r for r in package.requires if canonicalize_name(Requirement(r).name) not in names and not _extra(r)]
    return list(dict.fromkeys(kept))


def _extra(requirement: str) -> bool:
    """`x ; extra == "dev"`: wanted only with that extra, which nobody asked for."""
    marker = Requirement(requirement).marker
    return marker is not None and "extra" in str(marker)
