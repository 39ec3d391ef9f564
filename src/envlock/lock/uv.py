"""The default resolver: `uv pip compile --format pylock.toml` for the target platform, as a subprocess."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import tomllib
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from envlock.errors import (
    IndexUnreachableError,
    ResolverError,
    ResolverMissingError,
    UnsatisfiableError,
)
from envlock.fsutil import owned_prefix, sweep_stale
from envlock.lock.credentials import mask
from envlock.lock.pylock import dump_pylock, packages_from_pylock
from envlock.lock.resolve import LockedPackage, ResolveRequest

# uv wraps its report at the terminal's width: any run of spaces and line breaks between the words.
_NOT_FOUND = re.compile(r"Because\s+(\S+)\s+was\s+not\s+found\s+in\s+the\s+package\s+registry")
_FETCH = re.compile(r"Failed to fetch: `?(\S+?)`?$", re.MULTILINE)


# uv settings that change how it talks to the network, not what it resolves; every other UV_* variable
# (indexes, find-links, constraints, exclude-newer, …) is dropped: the spec alone decides the resolution.
_UV_ENV_KEPT = (
    "UV_CACHE_DIR", "UV_NO_CACHE", "UV_NATIVE_TLS", "UV_HTTP_TIMEOUT", "UV_HTTP_RETRIES", "UV_INSECURE_HOST",
    "UV_KEYRING_PROVIDER", "UV_CONCURRENT_DOWNLOADS", "UV_CONCURRENT_BUILDS", "UV_CONCURRENT_INSTALLS",
)  # fmt: skip


def uv_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment uv runs in: the caller's, less any UV_* setting that could steer the resolution."""
    env = {k: v for k, v in environ.items() if not k.startswith("UV_") or k in _UV_ENV_KEPT}
    env.setdefault("UV_HTTP_RETRIES", "1")
    return env


def index_environment(request: ResolveRequest) -> dict[str, str]:
    """The indexes for uv, credentials included, in its environment: a command line is readable by every user
    (/proc/PID/cmdline), a process's environment only by its owner."""
    env = {"UV_INDEX_URL": request.index_url}
    if request.extra_index_urls:
        env["UV_EXTRA_INDEX_URL"] = " ".join(request.extra_index_urls)
    return env


def find_uv() -> str:
    """The uv binary: the one installed with envlock (the `uv` package), else uv on PATH."""
    try:
        from uv import find_uv_bin  # noqa: PLC0415

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
    if not found:
        raise ResolverMissingError(
            "uv is not installed",
            hint="reinstall envlock with its dependencies (pip install envlock), or use --resolver pip-tools",
        )
    return found


def explain_failure(stderr: str, request: ResolveRequest) -> ResolverError:
    """One clear error from uv's report; credentials never included."""
    text = mask(stderr, request.secrets)
    platform = request.target.platform
    if missing := _NOT_FOUND.search(text):
        return UnsatisfiableError(
            f"package {missing.group(1)!r} was not found on the index ({mask(request.index_url, request.secrets)})",
            hint="check the spelling, or add the index that hosts it to [tool.envlock] extra-index-urls",
        )
    if "No solution found" in text:
        because = re.search(r"(Because .*?)(?:\n\s*\n|\Z)", text, re.DOTALL)
        reason = " ".join((because.group(1) if because else text).split())
        return UnsatisfiableError(
            f"the requirements cannot be satisfied together on {platform}: {reason}",
            hint="loosen or fix the conflicting version constraints",
        )
    if fetch := _FETCH.search(text):
        causes = [line.split("cause:", 1)[1].strip() for line in text.splitlines() if "cause:" in line]
        cause = causes[-1] if causes else "no answer"
        return IndexUnreachableError(f"cannot reach the package index: {fetch.group(1)} ({cause})")
    last = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return ResolverError(f"uv failed on {platform}: {' / '.join(last[-3:]) or 'no output'}")


class UvResolver:
    """Resolver through uv, for any target platform and Python version."""

    name = "uv"

    def __init__(self, uv_bin: str | None = None) -> None:
        self._uv_bin = uv_bin
        self._finding = threading.Lock()

    @property
    def uv_bin(self) -> str:
        """Path of the uv executable (looked up once: uv's own finder is not thread-safe on first use)."""
        with self._finding:
            if self._uv_bin is None:
                self._uv_bin = find_uv()
            return self._uv_bin

    def version(self) -> str:
        """`uv 0.13.9`."""
        return _uv_version(self.uv_bin)

    def resolve(self, request: ResolveRequest) -> list[LockedPackage]:
        """Run uv for one target; earlier pins are passed as the existing output file (uv's preferences)."""
        target = request.target
        sweep_stale(Path(tempfile.gettempdir()), "envlock-uv-")  # left by a killed envlock (its pid is gone)
        with tempfile.TemporaryDirectory(prefix=owned_prefix("envlock-uv-")) as tmp:
            requirements = Path(tmp, "requirements.in")
            requirements.write_text("\n".join(request.requirements) + "\n", encoding="utf-8")
            constraint_flags: list[str] = []
            if request.constraints:
                constraints = Path(tmp, "constraints.txt")
                constraints.write_text("\n".join(request.constraints) + "\n", encoding="utf-8")
                constraint_flags = ["--constraint", str(constraints)]
            output = Path(tmp, "pylock.toml")
            if request.preferences and not request.upgrade:
                output.write_text(
                    dump_pylock(((p, None) for p in request.preferences), f"=={target.python}.*"),
                    encoding="utf-8",
                )
            command = [
                self.uv_bin, "pip", "compile", str(requirements),
                "--format", "pylock.toml", "--output-file", str(output),
                "--python-platform", target.uv_python_platform,
                "--python-version", target.python,
                "--no-config", "--quiet", "--no-header",
                *request.compile_flags(indexes=False),
                *constraint_flags,
            ]  # fmt: skip
            env = {**uv_environment(os.environ), **index_environment(request)}
            try:
                done = _run_owned(command, env)
            except OSError as exc:
                raise ResolverMissingError(f"cannot run uv at {self.uv_bin}: {exc.strerror}") from exc
            if done.returncode != 0:
                raise explain_failure(done.stderr, request)
            document = tomllib.loads(output.read_text(encoding="utf-8"))
        return packages_from_pylock(document)


def _run_owned(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run uv, and end it whenever this thread leaves early. uv stays in envlock's process group on purpose: a
    Ctrl-C in the terminal (or a signal to the group) reaches it directly, even while it runs in a worker thread
    that never sees the KeyboardInterrupt."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as process:
        try:
            stdout, stderr = process.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                process.kill()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@cache
def _uv_version(uv_bin: str) -> str:
    done = subprocess.run([uv_bin, "--version"], capture_output=True, text=True, check=False)
    words = done.stdout.split()
    return f"uv {words[1]}" if len(words) > 1 else "uv (unknown version)"
