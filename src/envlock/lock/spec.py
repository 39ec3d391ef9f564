"""The project's wishes: `[tool.envlock]` in pyproject.toml, validated once, every problem reported."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from envlock.engine.runtimes import RUNTIMES, RuntimeName
from envlock.errors import SpecError, UsageError
from envlock.fsutil import sha256_file
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

FIELDS = (
    "name",
    "python",
    "requirements",
    "constraints",
    "extras",
    "groups",
    "platforms",
    "base",
    "system-packages",
    "cuda",
    "index-url",
    "extra-index-urls",
    "registry",
    "outputs",
    "inputs",
    "params",
    "untracked-max-bytes",
    "runtime",
    "imported-from",
)
# The untracked files a run keeps copies of, in total, unless [tool.envlock] untracked-max-bytes says otherwise.
UNTRACKED_MAX_BYTES = 50_000_000
_IMAGE_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
_CUDA = re.compile(r"^(auto|cpu|\d+\.\d+)$")
_PYTHON = re.compile(r"^3\.\d+$")
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:\d+)?(/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ImportedFrom:
    """The file `envlock init` took the requirements or pins from, and its sha256 then (`lock` follows it)."""

    path: str  # relative to the project
    sha256: str

    def changed(self, project_dir: Path) -> bool:
        """The file is gone or its bytes differ from what was imported."""
        file = project_dir / self.path
        return not file.is_file() or sha256_file(file) != self.sha256


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


class _Problems:
    """Collects every problem with its place, to report them all at once."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()
        self._found: list[tuple[int, str]] = []

    def add(self, dotted: str, message: str) -> None:
        line = self._locate(dotted)
        where = f"{self.path.name}:{line}" if line else self.path.name
        self._found.append((line or 0, f"{where}: {dotted}: {message}"))

    @property
    def items(self) -> list[str]:
        """The problems in the order they appear in the file."""
        return [text for _, text in sorted(self._found, key=lambda found: found[0])]

    def _locate(self, dotted: str) -> int | None:
        """The line where a key is written, found by reading the text (tomllib keeps no positions)."""
        *table, key = dotted.split(".")
        header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(map(re.escape, table)) + r"\s*\]")
        assignment = re.compile(r"^\s*\"?" + re.escape(key) + r"\"?\s*=")
        inside = not table
        for number, line in enumerate(self.lines, start=1):
            if re.match(r"^\s*\[", line):
                inside = bool(header.match(line))
                continue
            if inside and assignment.match(line):
                return number
        return None


def project_path_problem(path: str) -> str | None:
    """Why a declared input cannot be used: it must be a plain path inside the project (mounted under /work)."""
    parts = path.rstrip("/").split("/")
    if not path.rstrip("/") or path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        return f"{path!r} must be a path inside the project (relative, without . or ..)"
    return None


def check_input(path: str) -> str:
    """A declared input from the command line, normalized; a UsageError when it leaves the project."""
    if problem := project_path_problem(path):
        raise UsageError(f"--input {problem}", hint="inputs are mounted under /work, where the project is")
    return path.rstrip("/")


def _did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _string_list(value: Any, key: str, problems: _Problems) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.add(key, "must be a list of strings")
        return []
    return list(value)


def _requirement_list(value: Any, key: str, problems: _Problems) -> list[str]:
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
    groups: dict[str, Any], name: str, problems: _Problems, seen: tuple[str, ...] = ()
) -> list[str]:
    """PEP 735 dependency group, with `{include-group = …}` followed."""
    normalized = {canonicalize_name(k): v for k, v in groups.items()}
    key = canonicalize_name(name)
    if key not in normalized:
        problems.add("tool.envlock.groups", f"no dependency group {name!r}{_did_you_mean(name, list(groups))}")
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
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            f"no {PYPROJECT} in {project_dir}",
            hint="run envlock inside your project, or point at it with --project DIR",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read {path}: {exc}") from exc
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


def _table(parent: dict[str, Any], key: str, dotted: str, problems: _Problems) -> dict[str, Any]:
    """A sub-table, or an empty one (with a problem) when the key holds something else."""
    value = parent.get(key, {})
    if not isinstance(value, dict):
        problems.add(dotted, "must be a table")
        return {}
    return value


def _requirements(document: dict[str, Any], table: dict[str, Any], problems: _Problems, packaged: bool) -> list[str]:
    """[tool.envlock] requirements, else [project].dependencies; then the chosen extras and groups.

    `packaged`: the project is a package its build backend describes, whose dependencies come from there.
    """
    project = _table(document, "project", "project", problems)
    if "requirements" in table:
        requirements = _requirement_list(table["requirements"], "tool.envlock.requirements", problems)
    elif "dependencies" in project:
        requirements = _requirement_list(project["dependencies"], "project.dependencies", problems)
    else:
        requirements = []
        dynamic = project.get("dynamic", [])
        if isinstance(dynamic, list) and "dependencies" in dynamic and not packaged:
            problems.add("project.dependencies", "is dynamic; list what to lock in [tool.envlock] requirements")
    optional = _table(project, "optional-dependencies", "project.optional-dependencies", problems)
    for extra in _string_list(table.get("extras", []), "tool.envlock.extras", problems):
        if extra in optional:
            requirements += _requirement_list(optional[extra], f"project.optional-dependencies.{extra}", problems)
        else:
            close = _did_you_mean(extra, list(optional))
            problems.add("tool.envlock.extras", f"no optional-dependencies {extra!r}{close}")
    groups = _table(document, "dependency-groups", "dependency-groups", problems)
    for group in _string_list(table.get("groups", []), "tool.envlock.groups", problems):
        requirements += _group_requirements(groups, group, problems)
    if not requirements and not problems.items and not packaged:
        problems.add("project.dependencies", "nothing to lock: list packages in [project] dependencies")
    return requirements


def _base_and_python(table: dict[str, Any], problems: _Problems) -> tuple[str, str]:
    """The base, and the Python it carries (a recipe fixes it; an image base needs it stated)."""
    base = table.get("base", recipes.DEFAULT_BASE)
    if not isinstance(base, str):
        problems.add("tool.envlock.base", "must be a string")
        base = recipes.DEFAULT_BASE
    elif problem := recipes.check_base(base):
        problems.add("tool.envlock.base", problem)
        base = recipes.DEFAULT_BASE
    recipe = None if recipes.is_image_reference(base) else recipes.load_recipe(base)
    python = table.get("python", recipe.python if recipe else "3.11")
    if not isinstance(python, str) or not _PYTHON.match(python):
        problems.add("tool.envlock.python", f'{python!r} must be a Python version like "3.11"')
    elif recipe and python != recipe.python:
        problems.add("tool.envlock.python", f"base {recipe.name!r} carries Python {recipe.python}, not {python}")
    return base, str(python)


def _platforms(table: dict[str, Any], problems: _Problems) -> tuple[Platform, ...]:
    platforms = _string_list(table.get("platforms", ["linux/amd64"]), "tool.envlock.platforms", problems)
    if not platforms and "platforms" in table:
        problems.add("tool.envlock.platforms", "needs at least one platform")
    for platform in platforms:
        if platform not in PLATFORMS:
            problems.add(
                "tool.envlock.platforms",
                f"unknown platform {platform!r}{_did_you_mean(platform, PLATFORMS)}; supported: {', '.join(PLATFORMS)}",
            )
    if len(set(platforms)) != len(platforms):
        problems.add("tool.envlock.platforms", "lists a platform twice")
    return tuple(p for p in PLATFORMS if p in platforms)


def _indexes(table: dict[str, Any], problems: _Problems) -> tuple[str, tuple[str, ...]]:
    index_url = table.get("index-url", DEFAULT_INDEX)
    extras = _string_list(table.get("extra-index-urls", []), "tool.envlock.extra-index-urls", problems)
    for key, url in [("index-url", index_url)] + [("extra-index-urls", u) for u in extras]:
        if not isinstance(url, str):
            problems.add(f"tool.envlock.{key}", "must be a string")
        elif problem := url_problem(url):
            problems.add(f"tool.envlock.{key}", problem.replace(repr(url), repr(redact(url))))
    return str(index_url), tuple(extras)


def _run_settings(table: dict[str, Any], problems: _Problems) -> tuple[list[str], int]:
    """What runs read (inputs = [...]) and how much untracked code they keep (untracked-max-bytes)."""
    run_inputs = _string_list(table.get("inputs", []), "tool.envlock.inputs", problems)
    for declared in run_inputs:
        if problem := project_path_problem(declared):
            problems.add("tool.envlock.inputs", problem)
    cap = table.get("untracked-max-bytes", UNTRACKED_MAX_BYTES)
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
        problems.add("tool.envlock.untracked-max-bytes", f"{cap!r} must be a number of bytes (>= 0)")
        cap = UNTRACKED_MAX_BYTES
    return run_inputs, cap


def _runtime(table: dict[str, Any], problems: _Problems) -> RuntimeName:
    """What runs the image by default (`envlock run --runtime` overrides it); not an input of the lock."""
    runtime = table.get("runtime", "docker")
    if runtime in RUNTIMES:
        return cast("RuntimeName", runtime)
    shown = runtime if isinstance(runtime, str) else repr(runtime)
    problems.add(
        "tool.envlock.runtime",
        f"unknown runtime {runtime!r}{_did_you_mean(shown, RUNTIMES)}; supported: {', '.join(RUNTIMES)}",
    )
    return "docker"


def parse_spec(
    document: dict[str, Any], project_dir: Path, path: Path, text: str = "", backend: MetadataSource | None = None
) -> Spec:
    """Validate a parsed pyproject document into a Spec, or raise one SpecError listing every problem.

    `backend` answers for packages only their build backend can describe (setup.py, Poetry, dynamic metadata);
    without one, such a package is not a local package.
    """
    problems = _Problems(path, text)
    table = _envlock_table(document, path, problems)
    requirements = _requirements(document, table, problems, is_buildable(project_dir, document))
    constraints = _requirement_list(table.get("constraints", []), "tool.envlock.constraints", problems)
    local, own = local_packages(document, project_dir, requirements, backend)
    name = _image_name(document, table, project_dir, problems, own.name if own else None)
    requirements = _without_local(requirements, local, own)
    base, python = _base_and_python(table, problems)
    platforms = _platforms(table, problems)
    system_packages = _system_packages(table, problems)
    cuda = _cuda(table, problems)
    index_url, extra_index_urls = _indexes(table, problems)
    registry = _registry(table, problems)
    outputs = _outputs(table, problems)
    run_inputs, untracked_max_bytes = _run_settings(table, problems)
    params = _string_list(table.get("params", []), "tool.envlock.params", problems)
    for declared in params:
        if problem := project_path_problem(declared):
            problems.add("tool.envlock.params", problem)
    runtime = _runtime(table, problems)
    imported_from = _imported_from(table, problems)
    _raise_problems(problems, path)
    return Spec(
        project_dir=project_dir,
        name=name,
        python=python,
        requirements=tuple(requirements),
        platforms=platforms,
        base=base,
        system_packages=tuple(system_packages),
        cuda=cuda,
        index_url=index_url,
        extra_index_urls=extra_index_urls,
        registry=registry,
        outputs=tuple(outputs),
        run_inputs=tuple(p.rstrip("/") for p in run_inputs),
        params=tuple(params),
        untracked_max_bytes=untracked_max_bytes,
        constraints=tuple(constraints),
        local_packages=local,
        runtime=runtime,
        imported_from=imported_from,
    )


def _imported_from(table: dict[str, Any], problems: _Problems) -> ImportedFrom | None:
    """tool.envlock.imported-from = {path = "poetry.lock", sha256 = "…"}, written by `envlock init`."""
    value = table.get("imported-from")
    if value is None:
        return None
    key = "tool.envlock.imported-from"
    if not isinstance(value, dict) or set(value) != {"path", "sha256"}:
        problems.add(key, 'must be {path = "FILE", sha256 = "…"} (written by envlock init)')
        return None
    path, sha256 = value["path"], value["sha256"]
    if not isinstance(path, str) or (problem := project_path_problem(path)):
        problems.add(key, f"path {problem or 'must be a string'}")
        return None
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        problems.add(key, f"sha256 {sha256!r} must be 64 lowercase hex digits")
        return None
    return ImportedFrom(path, sha256)


def _envlock_table(document: dict[str, Any], path: Path, problems: _Problems) -> dict[str, Any]:
    """[tool.envlock], which must be a table (raised at once: nothing else can be read), its unknown keys noted."""
    tool = document.get("tool", {})
    if not isinstance(tool, dict):
        raise SpecError(f"{path.name}: tool must be a table", hint="write it as [tool.envlock]")
    table = tool.get("envlock", {})
    if not isinstance(table, dict):
        raise SpecError(f"{path.name}: tool.envlock must be a table", hint="write it as [tool.envlock]")
    for key in table:
        if key not in FIELDS:
            problems.add(f"tool.envlock.{key}", f"unknown key{_did_you_mean(key, FIELDS)}")
    return table


def _image_name(
    document: dict[str, Any], table: dict[str, Any], project_dir: Path, problems: _Problems, package: str | None
) -> str:
    """tool.envlock.name, by default the project's name (its package's, else its folder's) as a valid image name."""
    project = document.get("project", {})
    fallback = package or project_dir.resolve().name
    project_name = str(project.get("name", fallback) if isinstance(project, dict) else "")
    default_name = re.sub(r"[^a-z0-9._-]+", "-", project_name.lower()).strip("-._") or "envlock-project"
    name = table.get("name", default_name)
    if not isinstance(name, str) or not _IMAGE_NAME.match(name):
        problems.add("tool.envlock.name", f"{name!r} is not a valid image name (lowercase, digits, . _ - /)")
    return str(name)


def _system_packages(table: dict[str, Any], problems: _Problems) -> list[str]:
    """tool.envlock.system-packages: Debian package names."""
    system_packages = _string_list(table.get("system-packages", []), "tool.envlock.system-packages", problems)
    for package in system_packages:
        if problem := debian_package_problem(package):
            problems.add("tool.envlock.system-packages", problem)
    return system_packages


def _cuda(table: dict[str, Any], problems: _Problems) -> str:
    """tool.envlock.cuda: "auto", "cpu" or a CUDA version."""
    cuda = table.get("cuda", "auto")
    if not isinstance(cuda, str) or not _CUDA.match(cuda):
        problems.add("tool.envlock.cuda", f'{cuda!r} must be "auto", "cpu" or a version like "12.4"')
    return str(cuda)


def _registry(table: dict[str, Any], problems: _Problems) -> str | None:
    """tool.envlock.registry: host[:port][/namespace], or None."""
    registry = table.get("registry")
    if registry is not None and (not isinstance(registry, str) or not _REGISTRY.match(registry)):
        problems.add("tool.envlock.registry", f"{registry!r} must look like host[:port][/namespace]")
    return registry if isinstance(registry, str) else None


def _outputs(table: dict[str, Any], problems: _Problems) -> list[str]:
    """tool.envlock.outputs: paths inside the project."""
    outputs = _string_list(table.get("outputs", []), "tool.envlock.outputs", problems)
    for declared in outputs:
        if Path(declared).is_absolute() or ".." in Path(declared).parts:
            problems.add("tool.envlock.outputs", f"{declared!r} must be a path inside the project")
    return outputs


def _raise_problems(problems: _Problems, path: Path) -> None:
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
