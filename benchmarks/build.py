"""Benchmark `envlock build` against a hand-written Dockerfile: same base, same packages, side by side.

Run from the repository root (stdlib only; needs the Docker engine and network access to PyPI):

    .venv/bin/python benchmarks/build.py [--repeat N]

The packages are examples/digits's (scikit-learn>=1.5,<1.8, numpy>=2,<3), locked for linux/amd64 in a throw-away
project. The Dockerfile does the usual thing with the same name==version pins: FROM the image that `envlock base
build debian-bookworm --load` loads, `python3 -m venv`, COPY requirements.txt, `pip install --no-cache-dir -r`
(`docker build`, legacy builder). Timed for each: the cold build (envlock: fresh ENVLOCK_CACHE_DIR holding only
the user's bases/; Docker: --no-cache; neither image in the engine), the no-op rebuild, and the rebuild after
adding six==1.16.0 (envlock: pyproject.toml edited and `envlock lock` run untimed; Docker: requirements.txt edited,
layer cache on); plus the cold image's size. A second cold envlock build checks that the image ID is the same.
With --repeat N each cell is the median of N rounds. One table is printed, then the targets: envlock no-op under
0.5 s, its light-package rebuild under 25 % of its cold build, its image and cold build no bigger / slower than
the Dockerfile's. Images and directories made here are removed (the envlock-base image is kept). Exit status 1
when any command failed or timed out.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

from common import BIN, Failed, docker, docker_bench_args, print_notes, print_table, run_bench, seed_cache

PLATFORM, RECIPE = "linux/amd64", "debian-bookworm"
DEPENDENCIES, LIGHT = ("scikit-learn>=1.5,<1.8", "numpy>=2,<3"), "six==1.16.0"
NAME, DOCKER_REPO = "envlock-bench-build", "envlock-bench-dockerfile"
LABEL = "dev.envlock.benchmark=build"  # on every image the Dockerfile makes (intermediate ones too), for cleanup
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TIMEOUT = 900.0
NOOP_TARGET, LIGHT_SHARE_TARGET = 0.5, 0.25
ORDER = ("cold", "size", "no-op", "light")  # the order each round measures in
LABELS = {"cold": "cold build s", "no-op": "no-op rebuild s", "light": "one light package s", "size": "image size MB"}
DOCKERFILE = """\
FROM {base}
LABEL {label}
# HTTPS from containers goes through a proxy whose CA only the host trusts: give pip the host's bundle.
COPY host-ca.crt /usr/local/share/host-ca.crt
ENV PIP_CERT=/usr/local/share/host-ca.crt REQUESTS_CA_BUNDLE=/usr/local/share/host-ca.crt
RUN python3 -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt
"""
Cell = float | str  # a number, or a short label ("FAIL", "timeout", "n/a")
Lines = list[tuple[float, str]]  # output lines with their seconds since the command started


def run(command: list[str], env: dict[str, str] | None = None) -> tuple[float, Lines]:
    """Wall-clock seconds of one run and its output (stderr merged); Failed on a non-zero exit or after TIMEOUT."""
    start = time.perf_counter()
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        timer = threading.Timer(TIMEOUT, proc.kill)
        timer.start()
        lines = [(time.perf_counter() - start, line.rstrip()) for line in proc.stdout or ()]
        code = proc.wait()
        timer.cancel()
    elapsed = time.perf_counter() - start
    what = " ".join(Path(command[0]).name.split() + command[1:3])
    if code != 0 and elapsed >= TIMEOUT:
        raise Failed("timeout", f"{what}: did not finish within {TIMEOUT:.0f} s")
    if code != 0:
        tail = " / ".join(text.strip() for _, text in lines[-3:] if text.strip())
        raise Failed("FAIL", f"{what}: exit {code}: {tail or 'no output'}")
    return elapsed, lines


def envlock(*args: str, cache: Path | None = None) -> tuple[float, Lines]:
    env = dict(os.environ) if cache is None else os.environ | {"ENVLOCK_CACHE_DIR": str(cache)}
    return run([str(BIN / "envlock"), *args], env)


def size_mb(ref: str) -> float:
    if not (size := docker("image", "inspect", "-f", "{{.Size}}", ref)):
        raise Failed("FAIL", f"image {ref} is not in the engine")
    return int(size) / 1e6


class Bench:
    """The throw-away project, the Docker build context and what the rounds found."""

    def __init__(self, root: Path, base_ref: str) -> None:
        self.root, self.base_ref = root, base_ref
        self.project, self.context = root / "project", root / "context"
        self.project.mkdir()
        self.context.mkdir()
        shutil.copyfile(CA_BUNDLE, self.context / "host-ca.crt")
        (self.context / "Dockerfile").write_text(DOCKERFILE.format(base=base_ref, label=LABEL), encoding="utf-8")
        self.caches, self.cache = 0, root
        self.image_ids: list[str] = []
        self.notes: list[str] = []
        self.runs: dict[tuple[str, str], list[float]] = {}
        self.failed: dict[tuple[str, str], str] = {}
        self.refs: dict[str, str] = {}  # by state, "base" or "light": envlock's image reference,
        self.locks: dict[str, str] = {}  # its lock text,
        self.pins: dict[str, list[tuple[str, str]]] = {}  # and its (name, version) pins
        for state, extra in (("base", ()), ("light", (LIGHT,))):
            self.write_project(extra)
            envlock("lock", "-C", str(self.project))
            self.locks[state] = (self.project / "envlock.lock").read_text(encoding="utf-8")
            locked = tomllib.loads(self.locks[state])
            packages = locked["targets"][PLATFORM]["packages"]
            self.pins[state] = [(p["name"], p["version"]) for p in packages]
            self.refs[state] = f"{NAME}:{locked['meta']['lock-hash'].removeprefix('sha256:')[:12]}"

    def write_project(self, extra: tuple[str, ...] = ()) -> None:
        deps = ", ".join(f'"{d}"' for d in (*DEPENDENCIES, *extra))
        (self.project / "pyproject.toml").write_text(
            f'[project]\nname = "{NAME}"\nversion = "0"\ndependencies = [{deps}]\n\n'
            f'[tool.envlock]\nplatforms = ["{PLATFORM}"]\n',
            encoding="utf-8",
        )

    def fresh_cache(self) -> Path:
        """A new ENVLOCK_CACHE_DIR with only the user's bases/ in it (hard links where possible)."""
        self.caches += 1
        cache = self.root / f"cache-{self.caches}"
        seed_cache(cache)
        return cache

    def envlock_cold(self) -> float:
        """A cold `envlock build` of the base lock: fresh cache, image removed. Records the image ID."""
        self.write_project()
        (self.project / "envlock.lock").write_text(self.locks["base"], encoding="utf-8")
        for ref in self.refs.values():
            docker("image", "rm", ref)
        seconds, lines = envlock("build", "-C", str(self.project), cache=(cache := self.fresh_cache()))
        found = [m.group(1) for _, text in lines if (m := re.match(r"built \S+ \((sha256:[0-9a-f]+)\)", text))]
        self.image_ids += found[:1]
        if len(self.image_ids) == 1:
            steps = phases(lines, seconds)
            self.notes.append(f"envlock cold, s per step (its archive is written in the step before loading): {steps}")
        self.cache = cache
        return seconds

    def envlock_round(self) -> Iterator[tuple[str, float]]:
        """Cold, size, no-op, one light package (its `envlock lock` untimed)."""
        yield "cold", self.envlock_cold()
        yield "size", size_mb(self.refs["base"])
        seconds, lines = envlock("build", "-C", str(self.project), cache=self.cache)
        if not any(text.startswith("already built") for _, text in lines):
            self.notes.append("envlock no-op rebuild did not say `already built`: it built again")
        yield "no-op", seconds
        self.write_project((LIGHT,))
        envlock("lock", "-C", str(self.project))
        if (self.project / "envlock.lock").read_text(encoding="utf-8") != self.locks["light"]:
            self.notes.append("envlock lock gave another lock than at setup: the Dockerfile's pins may differ")
        seconds, lines = envlock("build", "-C", str(self.project), cache=self.cache)
        if not any(n.startswith("envlock one light package") for n in self.notes):
            self.notes.append(f"envlock one light package, s per step: {phases(lines, seconds)}")
        yield "light", seconds

    def docker_build(self, state: str, *flags: str) -> float:
        requirements = "".join(f"{name}=={version}\n" for name, version in self.pins[state])
        (self.context / "requirements.txt").write_text(requirements, encoding="utf-8")
        command = ["docker", "build", "--force-rm", *flags, "-t", f"{DOCKER_REPO}:{state}", str(self.context)]
        return run(command, os.environ | {"DOCKER_BUILDKIT": "0"})[0]

    def docker_round(self) -> Iterator[tuple[str, float]]:
        docker("image", "rm", f"{DOCKER_REPO}:base", f"{DOCKER_REPO}:light")
        yield "cold", self.docker_build("base", "--no-cache")
        yield "size", size_mb(f"{DOCKER_REPO}:base")
        yield "no-op", self.docker_build("base")
        yield "light", self.docker_build("light")

    def collect(self, tool: str, rounds: Iterator[tuple[str, float]]) -> bool:
        """Record one round's values; on a failure, label the step that failed and note why. False then."""
        done = 0
        try:
            for row, value in rounds:
                self.runs.setdefault((row, tool), []).append(value)
                done += 1
        except Failed as exc:
            self.failed[ORDER[done], tool] = exc.label
            self.notes.append(f"{tool} {ORDER[done]}: {exc}")
            return False
        return True

    def cell(self, row: str, tool: str) -> Cell:
        values = self.runs.get((row, tool))
        return statistics.median(values) if values else self.failed.get((row, tool), "n/a")

    def run_all(self, repeat: int) -> None:
        """Every round of both tools, then a second cold envlock build when there was only one, for the image ID."""
        for tool, round_of in (("envlock", self.envlock_round), ("Dockerfile", self.docker_round)):
            for i in range(repeat):
                print(f"  {tool} round {i + 1}/{repeat}", file=sys.stderr)
                if not self.collect(tool, round_of()):
                    break
        if len(self.image_ids) == 1:
            try:
                seconds = self.envlock_cold()
                self.notes.append(f"envlock second cold build (fresh cache, image removed) took {seconds:.2f} s")
            except Failed as exc:
                self.failed["second cold", "envlock"] = exc.label
                self.notes.append(f"envlock second cold build: {exc}")
        if len(self.image_ids) >= 2:
            same = "yes" if len(set(self.image_ids)) == 1 else "NO"
            ids = ", ".join(i[:19] for i in self.image_ids)
            self.notes.append(f"envlock cold builds give the same image ID: {same} ({ids})")
        if base_size := docker("image", "inspect", "-f", "{{.Size}}", self.base_ref):
            self.notes.append(f"both image sizes include the {int(base_size) / 1e6:.1f} MB base image they share")

    def cleanup(self) -> None:
        docker("image", "rm", *self.refs.values(), f"{DOCKER_REPO}:base", f"{DOCKER_REPO}:light")
        if leftovers := docker("images", "-a", "-q", "--filter", f"label={LABEL}").split():
            docker("image", "rm", "-f", *leftovers)


def phases(lines: Lines, total: float) -> str:
    """Each progress line with the seconds until the next one; `startup` before the first, `exit` after the last."""
    marks = [(t, text.strip()) for t, text in lines if text.strip() and not text.startswith(("built ", "already"))]
    ends = [t for t, _ in marks[1:]] + [next((t for t, text in lines if text.startswith("built ")), total)]
    parts = [f"startup {marks[0][0]:.2f}"] if marks else []
    parts += [f"{text} {end - t:.2f}" for (t, text), end in zip(marks, ends, strict=True)]
    return ", ".join([*parts, f"exit {total - ends[-1]:.2f}"] if marks else parts)


def fmt(cell: Cell, digits: int = 2) -> str:
    return f"{cell:.{digits}f}" if isinstance(cell, float) else cell


def ratio(top: Cell, bottom: Cell) -> float | None:
    return top / bottom if isinstance(top, float) and isinstance(bottom, float) and bottom > 0 else None


def verdict(value: float | None, limit: float, unit: str) -> str:
    if value is None:
        return "n/a (not measured)"
    shown = f"{value:.0%} of cold" if unit == "%" else f"{value:.2f}{unit}"
    return f"{'PASS' if value <= limit else 'MISS'} ({shown})"


def report(bench: Bench, repeat: int) -> None:
    version = subprocess.run([str(BIN / "envlock"), "--version"], capture_output=True, text=True, check=False)
    print(f"{version.stdout.strip()} | Docker engine {docker('version', '-f', '{{.Server.Version}}')} (legacy builder)")
    pins = ", ".join(f"{n} {v}" for n, v in bench.pins["base"])
    print(f"{PLATFORM}: {pins}; light change: + {LIGHT.replace('==', ' ')}")
    print(f"base {bench.base_ref}; median of {repeat} run(s) per cell")
    rows, vs = [("", "envlock", "Dockerfile", "envlock/Dockerfile")], dict[str, float | None]()
    for row, label in LABELS.items():
        mine, theirs = bench.cell(row, "envlock"), bench.cell(row, "Dockerfile")
        vs[row], digits = ratio(mine, theirs), 1 if row == "size" else 2
        rows.append((label, fmt(mine, digits), fmt(theirs, digits), "n/a" if vs[row] is None else f"{vs[row]:.2f}x"))
    print_table(rows)
    print()
    light = ratio(bench.cell("light", "envlock"), bench.cell("cold", "envlock"))
    for text, value, limit, unit in (
        (f"envlock no-op rebuild under {NOOP_TARGET} s", ratio(bench.cell("no-op", "envlock"), 1.0), NOOP_TARGET, " s"),
        (f"envlock one light package under {LIGHT_SHARE_TARGET:.0%} of its cold build", light, LIGHT_SHARE_TARGET, "%"),
        ("envlock image size <= Dockerfile's", vs["size"], 1.0, "x"),
        ("envlock cold build <= Dockerfile's", vs["cold"], 1.0, "x"),
    ):
        print(f"target: {text}: {verdict(value, limit, unit)}")
    print_notes(bench.notes)


def main(argv: list[str] | None = None) -> int:
    parser, args = docker_bench_args(__doc__, 1, "rounds per cell; the median is shown", argv)
    if not CA_BUNDLE.is_file():
        parser.error(f"{CA_BUNDLE} not found: the Dockerfile copies the host's CA bundle for pip")

    def make(root: Path) -> Bench:
        _, lines = envlock("base", "build", RECIPE, "--load")
        base_ref = next((text.split()[-1] for _, text in lines if text.startswith("loaded as ")), "")
        if not base_ref:
            raise Failed("FAIL", f"envlock base build {RECIPE} --load did not say what it loaded")
        return Bench(root, base_ref)

    steps: list[tuple[str, Callable[[Bench], None]]] = [("the builds", lambda bench: bench.run_all(args.repeat))]
    return run_bench("envlock-bench-build-", make, steps, lambda bench: report(bench, args.repeat))


if __name__ == "__main__":
    sys.exit(main())
