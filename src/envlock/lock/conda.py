"""conda's dependency lines (MatchSpecs) in PyPI's terms: names through data/conda.toml, versions as PEP 440.

`numpy=1.26` is conda's fuzzy match (`1.26*`) and becomes `numpy==1.26.*`; `numpy=1.26.4=py311h…` (what
`conda env export` writes) becomes `numpy==1.26.4` (build strings are conda's own); `conda-forge::x` loses its
channel; `a|b` (PEP 440 has no "or") becomes the one range that covers both alternatives.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from envlock.paths import data_file

TORCH_INDEX = "https://download.pytorch.org/whl"
_NAME = re.compile(r"^([A-Za-z0-9_.\-]+)\s*(.*)$")
_OPERATOR = re.compile(r"^(==|!=|>=|<=|~=|>|<|=)?\s*(.+)$")


@dataclass(frozen=True)
class MatchSpec:
    """One conda dependency line, taken apart: `channel::name version build`."""

    entry: str
    name: str
    version: str  # conda's version expression, "" for any
    build: str  # dropped: conda build strings have no PyPI meaning


@dataclass
class Translation:
    """What a conda dependency list says in PyPI's terms."""

    requirements: list[str] = field(default_factory=list)
    python: str | None = None
    cuda: str | None = None  # "cpu" or "X.Y": the torch build the file asks for
    extra_index_urls: list[str] = field(default_factory=list)
    not_handled: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@cache
def _table() -> dict[str, Any]:
    return tomllib.loads(data_file("conda.toml").read_text(encoding="utf-8"))


@cache
def pypi_names() -> dict[str, str]:
    """conda name (canonical) → PyPI requirement name, for the names that differ."""
    return {canonicalize_name(k): v for k, v in _table()["pypi"].items()}


def _in(group: str, name: str) -> bool:
    return canonicalize_name(name) in {canonicalize_name(n) for n in _table()["cuda"][group]}


def conda_only(name: str) -> dict[str, str] | None:
    """What to use instead of a conda-only package (`debian`, `pypi`, `why`), or None for a PyPI package."""
    known = {canonicalize_name(k): v for k, v in _table()["conda-only"].items()}
    if (found := known.get(canonicalize_name(name))) is not None:
        return dict(found)
    for pattern, value in _table()["conda-only-patterns"].items():
        if fnmatch.fnmatchcase(name.lower(), pattern):
            return dict(value)
    return None


def parse_matchspec(entry: str) -> MatchSpec:
    """`conda-forge::numpy=1.26.4=py311h…`, `numpy >=1.2,<2`, `numpy[version='>=1.2']` → name, version, build."""
    text = entry.rsplit("::", maxsplit=1)[-1].strip()
    brackets = re.search(r"\[(.*)\]\s*$", text)
    keys: dict[str, str] = {}
    if brackets:
        keys = {k.strip(): v.strip().strip("'\"") for k, v in re.findall(r"(\w+)\s*=\s*('[^']*'|\"[^\"]*\"|[^,]+)",
                                                                         brackets.group(1))}  # fmt: skip
        text = text[: brackets.start()].strip()
    match = _NAME.match(text)
    name, rest = (match.group(1), match.group(2).strip()) if match else (text, "")
    version, build = keys.get("version", ""), keys.get("build", "")
    if rest.startswith("=="):
        version, _, build = rest[2:].partition("=")
        version = "==" + version.strip()
    elif rest.startswith("="):
        version, _, build = rest[1:].partition("=")
        # With a build string the version is what was installed (`conda env export`): exact, not fuzzy.
        operator = "==" if build.strip() else "="
        version = operator + version.strip() if version.strip() not in ("", "*") else ""
    elif rest:
        words = rest.split()
        # the space form: `numpy 1.26.4 py311h_0` (a bare version there is exact, as in conda)
        version, build = words[0], " ".join(words[1:])
        if len(words) > 1 and (re.match(r"^[<>=!~]+$", words[0]) or re.match(r"^[<>=!~]", words[1])):
            version, build = "".join(words), ""  # `numpy >= 1.2` written with spaces
    return MatchSpec(entry, name, version.strip(), build.strip())


def _clause(clause: str) -> str | None:
    """One conda version clause as a PEP 440 specifier, or None when it has no equivalent."""
    match = _OPERATOR.match(clause.strip())
    if not match:
        return None
    operator, version = match.group(1) or "", match.group(2).strip()
    if version in ("*", ""):
        return ""
    fuzzy = operator == "=" or version.endswith("*")
    version = version.rstrip("*").rstrip(".")
    if operator in ("", "=", "==") and fuzzy:
        # `=1.26` matches 1.26.x; `=1.26.4` means 1.26.4 in practice (and PEP 440 reads that more plainly).
        return f"=={version}" if version.count(".") >= 2 else f"=={version}.*"
    return f"{operator or '=='}{version}"


def _covering(alternatives: list[str]) -> str | None:
    """`1.26|1.27` → `>=1.26,<1.28`: the one PEP 440 range that holds every alternative (only for plain versions)."""
    lows: list[Version] = []
    highs: list[tuple[Version, bool]] = []
    for alternative in alternatives:
        clause = _clause(alternative)
        if clause is None or "," in alternative or not clause.startswith("=="):
            return None
        text = clause[2:]
        try:
            version = Version(text.removesuffix(".*"))
        except InvalidVersion:
            return None
        lows.append(version)
        highs.append((version, text.endswith(".*")))
    high, prefix = max(highs)
    if prefix:
        parts = list(high.release)
        parts[-1] += 1
        upper = "<" + ".".join(map(str, parts))
    else:
        upper = f"<={high}"
    return f">={min(lows)},{upper}"


def pep440(version: str) -> tuple[str, str | None]:
    """A conda version expression as a PEP 440 specifier set (empty: any), and a note when it had to widen."""
    if not version:
        return "", None
    if "|" in version:
        alternatives = version.split("|")
        if version.startswith("=") and not version.startswith("=="):
            alternatives = ["=" + a.lstrip("=") for a in alternatives]  # `x=1.0|1.2`: the fuzzy `=` holds for both
        covering = _covering(alternatives)
        if covering is None:
            return "", f"{version!r} has no PEP 440 form (no 'or'): any version is allowed"
        return covering, f"{version!r} (conda's 'or') is taken as {covering}"
    clauses = [_clause(c) for c in version.split(",")]
    if any(c is None for c in clauses):
        return "", f"{version!r} is not a version conda writes: any version is allowed"
    text = ",".join(c for c in clauses if c)
    try:
        SpecifierSet(text)
    except InvalidSpecifier:
        return "", f"{version!r} has no PEP 440 form: any version is allowed"
    return text, None


def _instead(spec: MatchSpec, alternative: dict[str, str]) -> str:
    ways = []
    if debian := alternative.get("debian"):
        ways.append(f"Debian {debian} in system-packages")
    if pypi := alternative.get("pypi"):
        ways.append(f"PyPI {pypi} in requirements")
    return f"{spec.entry} (conda-only; instead: {', or '.join(ways)})"


def _cuda_minor(spec: MatchSpec) -> str | None:
    found = re.search(r"(\d+)\.(\d+)", spec.version)
    return f"{found.group(1)}.{found.group(2)}" if found else None


@dataclass
class _Seen:
    """What the lines say besides packages: the CUDA stack entries, a CPU-only choice, what is not needed."""

    cuda_entries: list[MatchSpec] = field(default_factory=list)
    cpu: bool = False
    not_needed: list[str] = field(default_factory=list)


def _take(spec: MatchSpec, out: Translation, seen: _Seen) -> None:
    """One dependency line into `out` (a requirement, the Python version, a left-out note) or `seen`."""
    name = canonicalize_name(spec.name)
    if name == "pip":
        return
    if name == "python":
        found = re.match(r"^(?:==?)?\s*(3\.\d+)", spec.version)
        out.python = found.group(1) if found else None
        if spec.version and not found:
            out.notes.append(f"{spec.entry}: not one Python version; the base's Python is used")
        return
    if _in("cpu", name):
        seen.cpu = True
        if name not in pypi_names():
            return
    if _in("version", name) or _in("absorbed", name):
        seen.cuda_entries.append(spec)
        return
    alternative = conda_only(spec.name)
    if alternative is None:
        out.requirements.append(_requirement(spec, out))
    elif alternative.get("why"):
        seen.not_needed.append(f"{spec.name} ({alternative['why']})")
    else:
        out.not_handled.append(_instead(spec, alternative))


def translate(entries: list[str]) -> Translation:
    """conda dependency lines (not the pip section) → requirements, Python, the torch build, what is left out."""
    out, seen = Translation(), _Seen()
    for entry in entries:
        _take(parse_matchspec(entry), out, seen)
    out.requirements = _merged(out.requirements)
    cuda = next((v for s in seen.cuda_entries if _in("version", s.name) and (v := _cuda_minor(s))), None)
    torch = any(canonicalize_name(Requirement(r).name) == "torch" for r in out.requirements)
    _cupy(out, cuda)
    if torch and seen.cpu:
        out.cuda = "cpu"
        out.extra_index_urls.append(f"{TORCH_INDEX}/cpu")
    elif torch and cuda:
        out.cuda = cuda
        out.extra_index_urls.append(f"{TORCH_INDEX}/cu{cuda.replace('.', '')}")
    elif seen.cuda_entries and not torch:
        named = ", ".join(s.entry for s in seen.cuda_entries)
        out.not_handled.append(
            f"{named} (conda's CUDA runtime; on PyPI the CUDA libraries are nvidia-* wheels that a framework's CUDA "
            "build depends on, e.g. tensorflow[and-cuda] or cupy-cuda12x)"
        )
    if seen.not_needed:
        out.notes.append(f"left out, not needed in the image: {', '.join(seen.not_needed)}")
    return out


def _requirement(spec: MatchSpec, out: Translation) -> str:
    pypi = pypi_names().get(canonicalize_name(spec.name), spec.name)
    specifier, note = pep440(spec.version)
    if note:
        out.notes.append(f"{spec.entry}: {note}")
    try:
        return str(Requirement(f"{pypi}{specifier}"))
    except InvalidRequirement:
        out.notes.append(f"{spec.entry}: the version has no PEP 440 form: any version is allowed")
        return str(Requirement(pypi))


def _merged(requirements: list[str]) -> list[str]:
    """One line per package: `py-xgboost` and `xgboost=2.0` are the same PyPI package, with both bounds."""
    merged: dict[str, Requirement] = {}
    for requirement in requirements:
        parsed = Requirement(requirement)
        key = canonicalize_name(parsed.name)
        if key in merged:
            merged[key].specifier &= parsed.specifier
            merged[key].extras |= parsed.extras
        else:
            merged[key] = parsed
    return [str(r) for r in merged.values()]


def _cupy(out: Translation, cuda: str | None) -> None:
    """conda's cupy is built per CUDA; on PyPI the build is in the name (cupy-cuda11x, cupy-cuda12x)."""
    major = (cuda or "12").split(".")[0]
    for index, requirement in enumerate(out.requirements):
        parsed = Requirement(requirement)
        if canonicalize_name(parsed.name) == "cupy":
            parsed.name = f"cupy-cuda{major}x"
            out.requirements[index] = str(parsed)
