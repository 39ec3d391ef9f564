"""Benchmark `envlock restore` against `docker pull` and `docker load`: what envlock adds to bringing an image back.

Run from the repository root (stdlib only; needs the Docker engine, Debian's docker-registry binary, and network
access to PyPI for the lock and the wheels):

    .venv/bin/python benchmarks/restore.py [--repeat N]

Untimed setup: a registry (docker-registry, storage in a temp dir) on a free 127.0.0.1 port; a throw-away project
pinning numpy==2.4.6 and six==1.16.0 for linux/amd64, with an ENVLOCK_CACHE_DIR of its own (holding only the
user's bases/, hard-linked), locked, built and pushed (`envlock build --registry 127.0.0.1:PORT/team`); one
`envlock run -- true` for a run record holding the pushed digest; `envlock archive RUN -o FILE` (outside the
project, so restore finds it only when it is passed). Then N rounds, each removing the image from the engine
(`docker rmi -f ID`: every tag and digest) before each of: (a) `envlock restore RUN --no-rebuild`, which must say
`from registry`; (b) `docker pull 127.0.0.1:PORT/team/NAME@sha256:DIGEST`; then the registry is stopped and (c)
`envlock restore RUN --no-rebuild --archive FILE` times the real fall-back (a refused pull, then the archive,
which must say `from archive`); (d) `docker load -i FILE`; the registry is started again on the same port. For
the notes, each round also times `envlock restore RUN --no-rebuild` with the image already in the engine (envlock's
fixed cost), a `docker pull` of the digest while the registry is down (the failed first try of (c)), and envlock's
archive verification in-process. Each cell is the best and the median of N. One table is printed, then the
targets: restore from the registry / docker pull <= 1.1 on the medians; restore from an archive / docker load is
reported only. The image, the registry process and the directories made here are removed (images that were in the
engine before, such as the envlock base, are kept; when the built image's ID was one of them, it stops before the
rounds). Exit status 1 when any command failed, timed out or restored from another source than the one measured.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

from common import (
    BIN,
    Cell,
    Failed,
    best_median,
    built_image,
    docker,
    docker_bench_args,
    free_port,
    print_notes,
    print_table,
    ratios,
    run_bench,
    seed_cache,
    timed,
)

NAME, PLATFORM, DEPENDENCIES = "envlock-bench-restore", "linux/amd64", ("numpy==2.4.6", "six==1.16.0")
PYPROJECT = (
    f'[project]\nname = "{NAME}"\ndependencies = {json.dumps(list(DEPENDENCIES))}\n'
    f'[tool.envlock]\nplatforms = ["{PLATFORM}"]\n'
)
NAMESPACE = "team"
TIMEOUT = 600.0
RATIO_TARGET = 1.1
PUSHED = re.compile(r"^pushed (\S+@sha256:[0-9a-f]+)", re.MULTILINE)
RESTORED = re.compile(r"^restored (sha256:[0-9a-f]+) from (\S+)", re.MULTILINE)
LABELS = {  # measurement key -> what it is called in the table and notes
    "registry": "envlock restore RUN --no-rebuild (from the registry)",
    "pull": "docker pull REPO@DIGEST",
    "archive": "envlock restore RUN --no-rebuild --archive FILE (registry down)",
    "load": "docker load -i FILE",
    "engine": "envlock restore RUN --no-rebuild, image already in the engine",
    "refused": "docker pull REPO@DIGEST, registry down (fails)",
    "verify": "envlock's archive verification, in-process",
}
SOURCES = {"registry": "registry", "archive": "archive", "engine": "engine"}  # the source each restore must name
# envlock's own archive check, timed in-process: the pass over the archive that `envlock restore --archive` makes
# before it streams the same file into the engine.
VERIFY = r"""
import sys, time
from pathlib import Path
from envlock.image.restore import verify_archive

start = time.perf_counter()
found = verify_archive(Path(sys.argv[1]))
print(f"{time.perf_counter() - start:.6f} {found}")
"""
TIMED = ("registry", "pull", "archive", "load")  # the table's rows


def megabytes(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


class Registry:
    """Debian's docker-registry on one fixed 127.0.0.1 port, so it can be stopped and started again at the same
    address (the run record's digest names it). Like tests/integration/localregistry.py, with stop/start."""

    def __init__(self, storage: Path) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise Failed("FAIL", "docker-registry is not installed: run bash scripts/setup.sh")
        self.binary, self.storage, self.address = binary, storage, f"127.0.0.1:{free_port()}"
        storage.mkdir(parents=True)
        self.config, self.log = storage / "config.yml", storage / "registry.log"
        self.config.write_text(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {storage / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.address}\n",
            encoding="utf-8",
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([self.binary, "serve", str(self.config)], stdout=log, stderr=log)
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        tail = self.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise Failed("FAIL", f"the registry did not start on {self.address}: {' / '.join(tail) or 'no output'}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stored(self) -> int:
        """Bytes of blobs and metadata in the registry's storage."""
        return sum(p.stat().st_size for p in (self.storage / "data").rglob("*") if p.is_file())


class Bench:
    """The registry, the throw-away project, its private envlock cache, the run, its archive, and the samples."""

    def __init__(self, root: Path) -> None:
        self.root, self.project, self.cache = root, root / "project", root / "cache"
        self.archive_file = root / "image.tar"
        self.env = os.environ | {"ENVLOCK_CACHE_DIR": str(self.cache)}
        self.registry = Registry(root / "registry")
        self.reference, self.image_id, self.digest, self.run_id = "", "", "", ""
        self.existing: set[str] = set()  # image IDs in the engine before the benchmark: never removed
        self.existing_tags: set[str] = set()  # and their NAME:TAG references
        self.samples: dict[str, list[float]] = {}
        self.failed: dict[str, str] = {}
        self.notes: list[str] = []
        self.setup_notes: list[str] = []
        self.tags_after: dict[str, str] = {}  # the image's tags after a restore, by source

    def envlock(self, *args: str) -> tuple[float, str]:
        return timed([str(BIN / "envlock"), *args], self.env)

    def setup(self) -> None:
        """Registry up, project locked, built and pushed, one run recorded, its image archived (all untimed)."""
        self.existing = set(docker("images", "-a", "-q", "--no-trunc").split())
        self.existing_tags = set(docker("images", "--format", "{{.Repository}}:{{.Tag}}").split())
        self.registry.start()
        self.project.mkdir()
        (self.project / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
        seed_cache(self.cache)
        project = str(self.project)
        locked, _ = self.envlock("lock", "-C", project)
        built, output = self.envlock("build", "-C", project, "--registry", f"{self.registry.address}/{NAMESPACE}")
        pushed = PUSHED.search(output)
        if not pushed:
            raise Failed("FAIL", f"envlock build --registry did not say where it pushed: {output.strip()}")
        self.reference, self.image_id = built_image(output)
        self.digest = pushed.group(1)
        if self.image_id in self.existing:  # the image ID does not depend on the project's name: another can share it
            tags = docker("image", "inspect", "-f", "{{json .RepoTags}}", self.image_id)
            raise Failed(
                "FAIL",
                f"image {self.image_id[:19]} was in the engine before (tags {tags}) and each round removes it: "
                "remove it first, or run this where it is not",
            )
        ran, _ = self.envlock("run", "-C", project, "--", "true")
        runs = [p for p in (self.project / ".envlock" / "runs").iterdir() if (p / "record.json").is_file()]
        if len(runs) != 1:
            raise Failed("FAIL", f"expected one run record after envlock run, found {len(runs)}")
        record = json.loads((runs[0] / "record.json").read_text(encoding="utf-8"))
        self.run_id = runs[0].name
        if record.get("image_id") != self.image_id:
            raise Failed("FAIL", f"the run record's image_id {record.get('image_id')} is not the built {self.image_id}")
        if self.digest not in record.get("repo_digests", []):
            raise Failed("FAIL", f"the run record's repo_digests {record.get('repo_digests')} miss {self.digest}")
        archived, _ = self.envlock("archive", self.run_id, "-C", project, "-o", str(self.archive_file))
        self.setup_notes.append(
            f"setup (untimed): lock {locked:.1f} s, build + push {built:.1f} s, run {ran:.1f} s, archive "
            f"{archived:.1f} s"
        )

    def remove_image(self) -> None:
        """The image out of the engine: every tag and digest; Failed when it is still there (a container holds it)."""
        docker("rmi", "-f", self.image_id)
        if docker("image", "inspect", "-f", "{{.Id}}", self.image_id):
            raise Failed("FAIL", f"image {self.image_id[:19]} is still in the engine after docker rmi -f")

    def commands(self) -> dict[str, list[str]]:
        envlock, project = str(BIN / "envlock"), str(self.project)
        restore = [envlock, "restore", self.run_id, "-C", project, "--no-rebuild"]
        return {
            "registry": restore,
            "pull": ["docker", "pull", self.digest],
            "archive": [*restore, "--archive", str(self.archive_file)],
            "load": ["docker", "load", "-i", str(self.archive_file)],
            "engine": restore,
            "refused": ["docker", "pull", self.digest],
            "verify": [sys.executable, "-c", VERIFY, str(self.archive_file)],
        }

    def measure(self, repeat: int) -> None:
        """Each round: (a) and (b) with the registry up, (c) and (d) with it down, each from an empty engine."""
        commands = self.commands()
        for i in range(repeat):
            print(f"  round {i + 1}/{repeat}", file=sys.stderr)
            for key in ("registry", "pull"):
                self.remove_image()
                self.once(key, commands[key])
            self.registry.stop()
            try:
                self.remove_image()
                self.refused(commands["refused"])
                for key in ("archive", "load"):
                    self.remove_image()
                    self.once(key, commands[key])
            finally:
                self.registry.start()
            if docker("image", "inspect", "-f", "{{.Id}}", self.image_id):
                self.once("engine", commands["engine"])
            self.once("verify", commands["verify"])

    def once(self, key: str, command: list[str]) -> None:
        """One timed run; a failed one is noted and not retried. `verify` times itself; a restore must name the
        source it is measured for."""
        if key in self.failed:
            return
        try:
            seconds, output = timed(command, self.env)
        except Failed as exc:
            self.failed[key] = exc.label
            self.notes.append(f"{LABELS[key]}: {exc}")
            return
        if key == "verify":
            seconds_text, _, found = output.strip().partition(" ")
            if found != self.image_id:
                self.failed[key] = "FAIL"
                self.notes.append(f"{LABELS[key]}: the archive verified as {found[:19]}, not {self.image_id[:19]}")
                return
            seconds = float(seconds_text)
        if key in SOURCES:
            restored = RESTORED.search(output)
            source = restored.group(2) if restored else "nothing"
            if not restored or restored.group(1) != self.image_id or source != SOURCES[key]:
                self.failed[key] = f"from {source}"
                self.notes.append(f"{LABELS[key]}: expected `from {SOURCES[key]}`, got: {output.strip()}")
                return
            if key != "engine" and key not in self.tags_after:
                self.tags_after[key] = docker("image", "inspect", "-f", "{{json .RepoTags}}", self.image_id)
        self.samples.setdefault(key, []).append(seconds)

    def refused(self, command: list[str]) -> None:
        """The time a pull takes to fail against the stopped registry: failing is the expected outcome here."""
        key = "refused"
        if key in self.failed:
            return
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            self.failed[key] = "timeout"
            self.notes.append(f"{LABELS[key]}: did not fail within {TIMEOUT:.0f} s")
            return
        if done.returncode == 0:
            self.failed[key] = "pulled"
            self.notes.append(f"{LABELS[key]}: the pull succeeded although the registry was stopped")
            return
        self.samples.setdefault(key, []).append(time.perf_counter() - start)

    def cell(self, key: str) -> Cell:
        values = self.samples.get(key)
        return (min(values), statistics.median(values)) if values else self.failed.get(key, "n/a")

    def sizes(self) -> None:
        """Image, archive and registry sizes, and how much of the image was already in the engine (shared layers)."""
        if not docker("image", "inspect", "-f", "{{.Id}}", self.image_id):
            docker("load", "-i", str(self.archive_file))
        size = docker("image", "inspect", "-f", "{{.Size}}", self.image_id)
        ours = json.loads(docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", self.image_id) or "[]")
        others = set[str]()
        for other in self.existing - {self.image_id}:
            others.update(json.loads(docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", other) or "[]"))
        try:
            with tarfile.open(self.archive_file) as archive:
                manifest = json.load(member(archive, "manifest.json"))[0]
                layers = [archive.getmember(name).size for name in manifest["Layers"]]
        except (tarfile.TarError, KeyError, ValueError, OSError) as exc:
            self.notes.append(f"archive {self.archive_file.name} could not be read for layer sizes: {exc}")
            layers = []
        self.notes.append(
            f"image {self.image_id[:19]} {megabytes(int(size)) if size else '?'} (docker image inspect), archive "
            f"{megabytes(self.archive_file.stat().st_size)}, registry storage {megabytes(self.registry.stored())} "
            "(envlock pushes its layers uncompressed: the blobs are the archive's layers)"
        )
        if layers and len(layers) == len(ours):
            shared = [n for n, diff_id in zip(layers, ours, strict=True) if diff_id in others]
            self.notes.append(
                f"{len(shared)} of the image's {len(ours)} layers ({megabytes(sum(shared))} of "
                f"{megabytes(sum(layers))}) are in images that were in the engine before (the envlock base): "
                "docker rmi keeps them, so each pull (a, b) fetches only the rest, while each load (c, d) still "
                "reads and hashes the whole archive"
            )

    def cleanup(self) -> None:
        """Containers from the image (none expected), the image unless it was here before, then the registry."""
        try:
            if self.image_id:
                if leftovers := docker("ps", "-a", "-q", "--filter", f"ancestor={self.image_id}").split():
                    docker("rm", "-f", *leftovers)
                    self.notes.append(f"{len(leftovers)} container(s) of the image were left behind: removed")
                if self.image_id not in self.existing:
                    docker("rmi", "-f", self.image_id)
                elif self.reference not in self.existing_tags:  # only the tag envlock build added here
                    docker("image", "rm", self.reference)
                if docker("image", "inspect", "-f", "{{.Id}}", self.image_id):
                    self.notes.append(f"image {self.image_id[:19]} still in the engine: kept")
        finally:
            self.registry.stop()


def member(archive: tarfile.TarFile, name: str) -> IO[bytes]:
    handle = archive.extractfile(name)
    if handle is None:
        raise KeyError(name)
    return handle


def verdict(value: tuple[float, float] | None, limit: float | None) -> str:
    if value is None:
        return "n/a (not measured)"
    best, median = value
    shown = f"median {median:.2f}x; best {best:.2f}x"
    if limit is None:
        return f"reported only ({shown})"
    return f"{'PASS' if median <= limit else 'MISS'} ({shown})"


def report(bench: Bench, repeat: int) -> None:
    version = subprocess.run([str(BIN / "envlock"), "--version"], capture_output=True, text=True, check=False)
    engine, client = docker("version", "-f", "{{.Server.Version}}"), docker("version", "-f", "{{.Client.Version}}")
    print(f"{version.stdout.strip()} | Docker engine {engine}, CLI {client} | registry {bench.registry.address}")
    print(f"{NAME} ({', '.join(DEPENDENCIES)}, {PLATFORM}): {bench.reference} {bench.image_id[:19]}")
    print(f"run {bench.run_id}, pushed as {bench.digest}")
    print(f"best and median of {repeat} run(s) per cell, the image removed from the engine before each")
    rows = [("", "best s", "median s")]
    over: dict[str, tuple[float, float] | None] = {}
    for mine, theirs in (("registry", "pull"), ("archive", "load")):
        for key in (mine, theirs):
            cell = bench.cell(key)
            rows.append((LABELS[key], *((f"{v:.3f}" for v in cell) if isinstance(cell, tuple) else (cell, cell))))
        over[mine] = pair = ratios(bench.cell(mine), bench.cell(theirs))
        shown = (f"{v:.2f}x" for v in pair) if pair else ("n/a", "n/a")
        rows.append((f"ratio envlock restore / {LABELS[theirs].split(' REPO')[0].split(' -i')[0]}", *shown))
    print_table(rows)
    print()
    print(
        f"target: restore from the registry / docker pull <= {RATIO_TARGET}: {verdict(over['registry'], RATIO_TARGET)}"
    )
    print(f"restore from an archive / docker load: {verdict(over['archive'], None)}")
    print_notes(bench.setup_notes + breakdown(bench) + bench.notes)


def breakdown(bench: Bench) -> list[str]:
    """What explains each ratio: envlock's fixed cost, the failed registry try, the verification pass."""
    notes = []
    explained = {
        "engine": "CLI start, run record, Docker connect, one image inspect: the floor of every restore",
        "refused": "what (c) spends on the registry before it falls back to the archive",
        "verify": "a full read and sha256 of the archive (config = image ID, each layer = its diff_id) before "
        "the same file is streamed into the engine",
    }
    for key, why in explained.items():
        if key in bench.samples:
            notes.append(f"{LABELS[key]}: {best_median(bench.samples[key])} ({why})")
    medians = {key: statistics.median(values) for key, values in bench.samples.items()}
    if {"registry", "pull"} <= medians.keys():
        extra = medians["registry"] - medians["pull"]
        floor = f"; envlock's floor (image in the engine) is {medians['engine']:.3f} s" if "engine" in medians else ""
        notes.append(
            f"restore from the registry median - docker pull median = {extra:.3f} s{floor}; the {RATIO_TARGET}x "
            f"target leaves {(RATIO_TARGET - 1) * medians['pull']:.3f} s at this image size"
        )
    if {"archive", "load"} <= medians.keys():
        extra = medians["archive"] - medians["load"]
        steps = [k for k in ("engine", "refused", "verify") if k in medians]
        parts = ", ".join(f"{LABELS[k].split(',')[0]} {medians[k]:.3f} s" for k in steps) or "not measured"
        notes.append(
            f"restore from an archive median - docker load median = {extra:.3f} s; its extra steps, by their own "
            f"medians: {parts} (sum {sum(medians[k] for k in steps):.3f} s)"
        )
    samples = (f"{k} {' '.join(f'{v:.2f}' for v in bench.samples[k])}" for k in TIMED if k in bench.samples)
    notes.append(f"every sample, s, in round order: {'; '.join(samples)}")
    for key, tags in bench.tags_after.items():
        notes.append(
            f"tags of the image after restore from {SOURCES[key]}: {tags or '?'} (the build's {bench.reference} is "
            f"{'re-applied' if bench.reference in tags else 'not re-applied'})"
        )
    return notes


def main(argv: list[str] | None = None) -> int:
    parser, args = docker_bench_args(__doc__, 3, "rounds per cell; the best and the median are shown", argv)
    if shutil.which("docker-registry") is None:
        parser.error("docker-registry is not installed: run bash scripts/setup.sh")
    steps: list[tuple[str, Callable[[Bench], None]]] = [
        ("setup", Bench.setup),
        ("the rounds", lambda bench: bench.measure(args.repeat)),
        ("the sizes", Bench.sizes),
    ]
    return run_bench("envlock-bench-restore-", Bench, steps, lambda bench: report(bench, args.repeat))


if __name__ == "__main__":
    sys.exit(main())
