"""The alternative resolver: pip-compile (pip-tools), which resolves only for the interpreter it runs in."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.utils import canonicalize_name

from envlock.errors import (
    IndexUnreachableError,
    ResolverError,
    ResolverMissingError,
    UnsatisfiableError,
    UnsupportedTargetError,
)
from envlock.lock.credentials import mask
from envlock.lock.resolve import LockedPackage, ResolveRequest
from envlock.lock.simpleindex import FileFinder, SimpleIndexFinder
from envlock.lock.targets import host_platform

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
# pip settings from the user's pip.conf or environment must not leak into a lock: the spec names the indexes.
_PIP_ENV_DROPPED = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_CONSTRAINT")


def host_target() -> tuple[str, str]:
    """The (platform, python) pip-compile can serve: this machine and this interpreter."""
    return host_platform(), f"{sys.version_info.major}.{sys.version_info.minor}"


def parse_pins(text: str) -> dict[str, str]:
    """Canonical name → version, from pip-compile's `name==version` lines."""
    pins: dict[str, str] = {}
    for raw in text.replace("\\\n", " ").splitlines():
        if match := _PIN.match(raw.split("#", 1)[0].strip()):
            pins[canonicalize_name(match.group(1))] = match.group(2).split(";")[0]
    return pins


class PipToolsResolver:
    """Resolver through `python -m piptools compile`, then each pin's files from the index's Simple API.

    pip-compile is not asked for hashes: pip-tools 7.6 finds no JSON API behind a `…/simple` index URL and then
    downloads every file of every pinned release to hash it (666 files for five scientific packages). The
    Simple API publishes each file's sha256 — the same source uv locks from — and builds verify those bytes.
    """

    name = "pip-tools"

    def __init__(self, finder: FileFinder | None = None, python: str = sys.executable) -> None:
        self.finder = finder or SimpleIndexFinder()
        self.python = python

    def version(self) -> str:
        """`pip-tools 7.6.2`."""
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            return f"pip-tools {version('pip-tools')}"
        except PackageNotFoundError:
            return "pip-tools (unknown version)"

    def resolve(self, request: ResolveRequest) -> list[LockedPackage]:
        """Refuse targets other than the host; otherwise compile, then list and cross-check files."""
        target = request.target
        host_platform, host_python = host_target()
        if (target.platform, target.python) != (host_platform, host_python):
            raise UnsupportedTargetError(
                f"pip-tools resolves only for the interpreter it runs in (Python {host_python} on "
                f"{host_platform}); it cannot resolve for Python {target.python} on {target.platform}",
                hint="use the default resolver (--resolver uv), which resolves for any target",
            )
        with tempfile.TemporaryDirectory(prefix="envlock-piptools-") as tmp:
            requirements = Path(tmp, "requirements.in")
            lines = list(request.requirements)
            if request.constraints:
                Path(tmp, "constraints.txt").write_text("\n".join(request.constraints) + "\n", encoding="utf-8")
                lines.append("-c constraints.txt")
            requirements.write_text("\n".join(lines) + "\n", encoding="utf-8")
            output = Path(tmp, "requirements.txt")
            if request.preferences and not request.upgrade:
                output.write_text("".join(f"{p.name}=={p.version}\n" for p in request.preferences), encoding="utf-8")
            command = [
                self.python, "-m", "piptools", "compile", str(requirements), "--output-file", str(output),
                "--allow-unsafe", "--strip-extras", "--quiet", "--no-header",
                "--no-annotate", "--no-emit-index-url", "--no-emit-find-links", "--no-emit-trusted-host",
                "--pip-args", "--retries 1 --timeout 30", *request.compile_flags(),
            ]  # fmt: skip
            env = {k: v for k, v in os.environ.items() if k not in _PIP_ENV_DROPPED}
            env["PIP_CONFIG_FILE"] = os.devnull
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                raise self._explain(done.stderr, request)
            pins = parse_pins(output.read_text(encoding="utf-8"))
        return self.finder.files(sorted(pins.items()), target, request.index_urls)

    @staticmethod
    def _explain(stderr: str, request: ResolveRequest) -> ResolverError:
        text = mask(stderr, request.secrets)
        index = mask(request.index_url, request.secrets)
        if "No module named piptools" in text:
            return ResolverMissingError(
                "pip-tools is not installed in envlock's environment",
                hint="pip install pip-tools, or use the default resolver (--resolver uv)",
            )
        # pip logs an unreachable index as a warning, then reports "no versions": the warning is the cause.
        if unreachable := re.search(r"connection broken by '(\w+)\(.*?\)'\)?'?: (\S+)", text):
            return IndexUnreachableError(
                f"cannot reach the package index {index} ({unreachable.group(1)} on {unreachable.group(2)})"
            )
        if re.search(r"Could not fetch URL|Max retries exceeded", text):
            return IndexUnreachableError(f"cannot reach the package index {index}")
        if missing := re.search(r"No matching distribution found for (\S+)", text):
            return UnsatisfiableError(
                f"no version of {missing.group(1)!r} on {index} satisfies the requirements",
                hint="check the spelling and the version constraint, or add the index that hosts it",
            )
        if "ResolutionImpossible" in text or "conflict" in text.lower():
            conflict = [line.strip() for line in text.splitlines() if "requested" in line or "depends on" in line]
            return UnsatisfiableError(
                f"the requirements cannot be satisfied together: {'; '.join(conflict[:3]) or 'conflicting pins'}",
                hint="loosen or fix the conflicting version constraints",
            )
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        return ResolverError(f"pip-compile failed: {' / '.join(lines[-3:]) or 'no output'}")
