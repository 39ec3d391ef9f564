"""Helpers the benchmark scripts share: timing a command, quiet docker calls, envlock's cache, a free port."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence, Sized
from pathlib import Path
from typing import Protocol, TypeVar

TIMEOUT = 600.0


class Failed(Exception):
    """A benchmarked command failed or timed out; the message says why."""

    def __init__(self, label: str, reason: str) -> None:
        super().__init__(reason)
        self.label = label


def timed(command: list[str], env: dict[str, str] | None = None, timeout: float = TIMEOUT) -> tuple[float, str]:
    """Wall-clock seconds of one run, and its output; Failed on a non-zero exit or after the timeout."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise Failed("timeout", f"did not finish within {timeout:.0f} s") from None
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        tail = " / ".join(line.strip() for line in (done.stderr or done.stdout).strip().splitlines()[-3:])
        raise Failed("FAIL", f"exit {done.returncode}: {tail or 'no output'}")
    return elapsed, done.stdout + done.stderr


def docker(*args: str) -> str:
    """A quiet, untimed docker command's stdout ("" when it failed)."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def user_cache() -> Path:
    """envlock's own default: $ENVLOCK_CACHE_DIR, else the user cache directory (platformdirs' on Linux)."""
    if configured := os.environ.get("ENVLOCK_CACHE_DIR"):
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "envlock"


# What `envlock build` says about the image: `built NAME:TAG (sha256:…)` or `already built: NAME:TAG (sha256:…)`.
BUILT = re.compile(r"(?:built|already built:) (\S+) \((sha256:[0-9a-f]+)\)")


def built_image(output: str) -> tuple[str, str]:
    """(reference, image ID) from `envlock build`'s output; Failed when it says neither."""
    found = BUILT.search(output)
    if not found:
        raise Failed("FAIL", f"envlock build did not say which image it built: {output.strip()[-200:]}")
    return found.group(1), found.group(2)


def seed_cache(cache: Path) -> None:
    """Give a benchmark's own ENVLOCK_CACHE_DIR the user's bases/ (hard links where possible): the base is built
    once per machine, never inside a timing."""
    if (user_cache() / "bases").is_dir():
        shutil.copytree(user_cache() / "bases", cache / "bases", copy_function=link_or_copy)


def link_or_copy(source: str, target: str) -> None:
    """Hard-link a cache file (no extra disk), copying when the file system refuses."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


BIN = Path(sys.executable).parent


class Bench(Protocol):
    """What run_bench needs of a benchmark: the cells that failed, and a cleanup that always runs."""

    @property
    def failed(self) -> Sized: ...

    def cleanup(self) -> None: ...


B = TypeVar("B", bound=Bench)


Cell = tuple[float, float] | str  # (best, median) seconds, or a short label ("FAIL", "timeout", "n/a")


def ratios(top: Cell, bottom: Cell) -> tuple[float, float] | None:
    """(best, median) of one cell over another; None when either was not measured."""
    if isinstance(top, str) or isinstance(bottom, str) or min(bottom) <= 0:
        return None
    return top[0] / bottom[0], top[1] / bottom[1]


def best_median(samples: list[float]) -> str:
    """A cell's samples for the notes: `best 0.413 s, median 0.448 s`."""
    return f"best {min(samples):.3f} s, median {statistics.median(samples):.3f} s"


def print_table(rows: Sequence[tuple[str, ...]], labels: int = 1) -> None:
    """Rows as aligned columns after a blank line: the first `labels` columns left-aligned, numbers right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print(
            "  ".join(
                c.ljust(w) if i < labels else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def print_notes(notes: list[str]) -> None:
    """The notes under a table, when there are any."""
    if notes:
        print("\nnotes:")
        for note in notes:
            print(f"  {note}")


def run_bench(
    prefix: str,
    make: Callable[[Path], B],
    steps: list[tuple[str, Callable[[B], None]]],
    report: Callable[[B], None],
) -> int:
    """Make the benchmark in a temp directory, run its steps (cleaning up whatever happens), then print its report;
    the exit status: 1 when a step or any measured command failed."""
    with tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True) as tmp:
        try:
            bench = make(Path(tmp))
        except Failed as exc:
            print(f"setup failed: {exc}", file=sys.stderr)
            return 1
        step = "setup"
        try:
            for label, action in steps:
                step = label
                action(bench)
        except Failed as exc:
            print(f"{step} failed: {exc}", file=sys.stderr)
            return 1
        finally:
            bench.cleanup()
    report(bench)
    return 1 if bench.failed else 0


def docker_bench_args(
    doc: str | None, repeat: int, repeat_help: str, argv: list[str] | None
) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse `--repeat` and refuse to start without envlock in this venv or a reachable Docker engine."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=repeat, help=repeat_help)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not (BIN / "envlock").exists():
        parser.error(f"envlock not found in {BIN}: run this with the project's .venv/bin/python")
    if not docker("version", "-f", "{{.Server.Version}}"):
        parser.error("the Docker engine is not reachable (`docker info`); start it: bash scripts/services.sh")
    return parser, args
