"""The container runtimes a run can use, and what launching through a command-line runtime has in common."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, Protocol, runtime_checkable

from envlock.errors import EngineError

# Where a runtime's output goes, chunk by chunk: ("stdout" | "stderr", bytes). The one such type of every launcher.
StreamSink = Callable[[str, bytes], None]

RuntimeName = Literal["docker", "podman", "charliecloud"]
RUNTIMES: tuple[RuntimeName, ...] = ("docker", "podman", "charliecloud")


@dataclass(frozen=True)
class RuntimeInfo:
    """Which runtime ran a command, and its version (None when it did not say)."""

    name: str
    version: str | None


@dataclass(frozen=True)
class Done:
    """A finished command: exit status and its captured output."""

    code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class LayerFile:
    """One image layer fetched into a file (its blob checked against its digest); the diff_id, the sha256 of the
    uncompressed tar, is checked by whoever unpacks it."""

    path: Path
    compression: str  # "none" | "gzip"
    diff_id: str


# The label every envlock image carries: the hash of the lock it was built from (image/plan.py's config).
LOCK_HASH_LABEL = "dev.envlock.lock-hash"


@runtime_checkable
class OwnImages(Protocol):
    """A runtime that keeps images of its own (Podman's store, Charliecloud's directories): it can get one from the
    registry by digest itself, so a node needs no Docker engine."""

    name: str

    def has_image(self, image_id: str) -> bool:
        """True when the runtime holds the image under exactly this ID."""
        ...

    def pull(self, image_id: str, pushed: str) -> None:
        """Get the image from the registry by `host/repository@sha256:…`, accepted only as `image_id`."""
        ...

    def labels(self, image_id: str) -> dict[str, str]:
        """The labels of an image the runtime holds (from its config; empty when it has none)."""
        ...


Command = Callable[[Sequence[str]], Done]  # runs a short command to completion (a fake in unit tests)
# Runs a long command with the given environment (None: envlock's own), its output passed on as it comes.
Stream = Callable[[Sequence[str], StreamSink, Mapping[str, str] | None], int]
# How a runtime with a store of its own gets an image never pushed: image ID → a verified docker-archive of it
# written to the path (the Docker engine's export, through the composition root).
Export = Callable[[str, Path], object]


def run_tool(args: Sequence[str]) -> Done:
    """Run a short runtime command (version, load, inspect); a missing program is an EngineError."""
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise EngineError(f"{args[0]} is not installed", hint=INSTALL_HINTS.get(args[0], "")) from exc
    return Done(done.returncode, done.stdout, done.stderr)


INSTALL_HINTS = {
    "podman": "install Podman (Debian: apt-get install podman) or choose another runtime with --runtime",
    "ch-run": "install Charliecloud (Debian: apt-get install charliecloud-runtime) or choose another runtime",
    "ch-fromhost": "install Charliecloud's builders/tools (Debian: charliecloud-builders) for GPU support",
    "unshare": "install util-linux (Debian: apt-get install util-linux): Charliecloud's read-only inputs need it",
}


def _pump(pipe: IO[bytes], stream: str, output: StreamSink) -> None:
    for chunk in iter(lambda: pipe.read1(1 << 16), b""):  # type: ignore[attr-defined]
        output(stream, chunk)


def stream_command(args: Sequence[str], output: StreamSink, env: Mapping[str, str] | None = None) -> int:
    """Run a command in its own process group, its stdout and stderr passed on live; Ctrl-C stops the whole group
    (and is re-raised), so nothing keeps running behind the user's back."""
    try:
        process = subprocess.Popen(
            list(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=None if env is None else dict(env),
        )
    except FileNotFoundError as exc:
        raise EngineError(f"{args[0]} is not installed", hint=INSTALL_HINTS.get(args[0], "")) from exc
    assert process.stdout is not None and process.stderr is not None  # noqa: S101  (PIPE given above)
    pumps = [
        threading.Thread(target=_pump, args=(process.stdout, "stdout", output), daemon=True),
        threading.Thread(target=_pump, args=(process.stderr, "stderr", output), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    try:
        code = process.wait()
    except BaseException:
        _stop(process)
        raise
    for pump in pumps:
        pump.join()
    return code


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group, SIGKILL after 10 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        return


def string_labels(value: object) -> dict[str, str]:
    """An image config's `Labels` as strings (absent, null or not a table: none)."""
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def first_line(done: Done) -> str:
    """What a failed command said, in one line."""
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {done.code}"
