"""Benchmark a stack's whole life, envlock against a Dockerfile: build, rebuild, reload, and the first imports.

Run from the repository root (stdlib only; needs the Docker engine and network access to PyPI):

    .venv/bin/python benchmarks/bigstack.py [--torch | --many [--heavy SPEC]]

The default set is examples/digits's (scikit-learn>=1.5,<1.8, numpy>=2,<3; `import sklearn...` as train.py does);
`--torch` takes torch==2.5.1 with its CUDA wheels (about 3 GB, downloaded once into the shared wheel cache, then
`import torch`); `--many` takes torch==2.5.1, transformers and datasets: 53 packages locked (the same CUDA
wheels plus ~110 MB of light and mid-sized ones, 3.1 GB in all; opt-in, as --torch, because nothing of it is cached
on a fresh machine; `import torch, transformers, datasets`) and adds a heavy non-CUDA package at the end.
Both sides start from the same base (`envlock base build debian-bookworm --load`); the Dockerfile
is benchmarks/build.py's (`pip install --no-cache-dir -r requirements.txt`, pinned to the lock's versions, pip
through the host's CA bundle). Each side, in turn, is timed for:

- cold build: envlock with a fresh ENVLOCK_CACHE_DIR holding only the user's bases/ (the torch set keeps the
  wheel cache: the download is not what is measured); Docker `--no-cache`;
- no-op rebuild;
- one light package added (six==1.16.0; envlock's `envlock lock` untimed);
- image removed and brought back from what is cached on the machine: envlock `build` again (every layer in its
  layer store; nothing of the image left in the engine but the base); Docker: `docker load` of a `docker save`
  of its image (made untimed before the removal: the layers the builder caches go with the image). Throughput is
  the image's own layer bytes over the seconds, next to `cat` of envlock's same layer files into /dev/null and
  `tar -x` of them into a scratch directory (the files any load must write);
- the imports, in the light image: the first start after the build, then the median of three more starts
  (envlock: `envlock run`, the bytecode folder of the image empty before the first; Docker: `docker run --rm`),
  timed inside the container;
- `--many` only: one heavy package added on top of the light one (scipy, which moves numpy), then removed again
  (numpy stays where scipy moved it); envlock's `envlock lock` untimed; its notes say how many layers and MB were
  sent, and the MB of the layers new since the image before (what changed).

One table is printed (envlock, Dockerfile, their ratio, from this one run), then the targets: the light package
rebuilt in 5 s or less; the later starts' imports within 1.1x of the Dockerfile's; envlock's reload at disk speed
(its GB/s over cat's); and two cold envlock builds (from empty caches) give the same image ID. Images and
directories made here are removed. Exit status 1 when any command failed or timed out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

from build import CA_BUNDLE, DOCKERFILE, Lines, envlock, phases, run, size_mb
from common import BIN, Failed, docker, print_notes, print_table, run_bench, seed_cache, user_cache

from envlock.engine.launch import BYTECODE_LABEL

PLATFORM, RECIPE, LIGHT = "linux/amd64", "debian-bookworm", "six==1.16.0"
SETS = {
    "digits": (
        ("scikit-learn>=1.5,<1.8", "numpy>=2,<3"),
        "import numpy, sklearn.datasets, sklearn.linear_model, sklearn.model_selection",
    ),
    "torch": (("torch==2.5.1",), "import torch"),
    "many": (
        ("torch==2.5.1", "transformers>=4.46,<4.47", "datasets>=3.1,<3.2"),
        "import torch, transformers, datasets",
    ),
}
# ~40 MB, not a dependency of the many set: a layer of its own. 1.14.1 pins numpy < 2.3, so it moves the set's numpy
# too (two heavy layers change); `--heavy scipy==1.16.3` (numpy < 2.6) is a pure addition, the case.
HEAVY = "scipy==1.14.1"
NAME, DOCKER_REPO = "envlock-bench-bigstack", "envlock-bench-bigstack-dockerfile"
LABEL = "dev.envlock.benchmark=bigstack"
LIGHT_TARGET, IMPORT_TARGET = 5.0, 1.1
STATES = ("base", "light", "heavy", "removed")  # the projects' states, in the order they are locked and built
ROWS = {
    "cold": "cold build s",
    "no-op": "no-op rebuild s",
    "light": "one light package added s",
    "heavy": "one heavy package added s (--many)",
    "removed": "  the same removed again s (--many)",
    "reload": "image removed, back from cache s",
    "reload-gbs": "  its layers, GB/s",
    "import-1": "imports, first start s",
    "import-2": "imports, later starts s (median of 3)",
    "size": "image size MB",
}
TIMER = "import time; t = time.perf_counter(); {statement}; print('IMPORT', time.perf_counter() - t)"


def import_seconds(output: str) -> float:
    found = re.findall(r"^IMPORT ([0-9.]+)$", output, re.MULTILINE)
    if not found:
        raise Failed("FAIL", f"the import probe printed no time: {output.strip()[-200:]}")
    return float(found[-1])


def layer_bytes(ref: str) -> int:
    """The uncompressed size of an image's layers, base included (what a load moves)."""
    return sum(int(size) for size in docker("image", "inspect", "-f", "{{.Size}}", ref).split())


class Bench:
    """The throw-away project, the Docker build context, and one column of values per tool."""

    def __init__(self, root: Path, base_ref: str, stack: str, heavy: str = HEAVY) -> None:
        self.root, self.base_ref, self.stack, self.heavy = root, base_ref, stack, heavy
        self.dependencies, self.statement = SETS[stack]
        self.project, self.context = root / "project", root / "context"
        self.project.mkdir()
        self.context.mkdir()
        shutil.copyfile(CA_BUNDLE, self.context / "host-ca.crt")
        (self.context / "Dockerfile").write_text(DOCKERFILE.format(base=base_ref, label=LABEL), encoding="utf-8")
        self.values: dict[tuple[str, str], float | str] = {}
        self.notes: list[str] = []
        self.failed: list[str] = []
        self.image_ids: list[str] = []
        self.caches = 0
        self.cache = root
        self.built_at = 0.0  # when the last `envlock build` returned (time.time(), as a file's mtime)
        self.reload_bytes = self.docker_bytes = 0
        self.cat: tuple[int, float] | None = None
        self.untar: tuple[int, float] | None = None
        self.refs: dict[str, str] = {}
        self.locks: dict[str, str] = {}
        self.pins: dict[str, list[tuple[str, str]]] = {}
        states: tuple[tuple[str, tuple[str, ...]], ...] = (("base", ()), ("light", (LIGHT,)))
        if stack == "many":
            states += (("heavy", (LIGHT, heavy)), ("removed", (LIGHT,)))
        for state, extra in states:
            self.write_project(extra)
            envlock("lock", "-C", str(self.project))
            self.locks[state] = (self.project / "envlock.lock").read_text(encoding="utf-8")
            locked = tomllib.loads(self.locks[state])
            self.pins[state] = [(p["name"], p["version"]) for p in locked["targets"][PLATFORM]["packages"]]
            self.refs[state] = f"{NAME}:{locked['meta']['lock-hash'].removeprefix('sha256:')[:12]}"

    def write_project(self, extra: tuple[str, ...] = ()) -> None:
        deps = ", ".join(f'"{d}"' for d in (*self.dependencies, *extra))
        (self.project / "pyproject.toml").write_text(
            f'[project]\nname = "{NAME}"\nversion = "0"\ndependencies = [{deps}]\n\n'
            f'[tool.envlock]\nplatforms = ["{PLATFORM}"]\n',
            encoding="utf-8",
        )

    def fresh_cache(self) -> Path:
        """A new ENVLOCK_CACHE_DIR with the user's bases/ (and, for torch, a link to the user's wheels)."""
        self.caches += 1
        cache = self.root / f"cache-{self.caches}"
        seed_cache(cache)
        if self.stack in ("torch", "many") and (user_cache() / "wheels").is_dir():
            (cache / "wheels").symlink_to(user_cache() / "wheels")
        return cache

    def put(self, row: str, tool: str, value: float | str) -> None:
        self.values[row, tool] = value

    def step(self, row: str, tool: str, action: Callable[[], float]) -> bool:
        try:
            self.put(row, tool, action())
        except Failed as exc:
            self.put(row, tool, exc.label)
            self.failed.append(f"{tool} {row}")
            self.notes.append(f"{tool} {ROWS[row].strip()}: {exc}")
            return False
        return True

    # envlock

    def envlock_cold(self) -> float:
        self.write_project()
        (self.project / "envlock.lock").write_text(self.locks["base"], encoding="utf-8")
        for ref in self.refs.values():
            docker("image", "rm", ref)
        self.cache = self.fresh_cache()
        seconds, lines = envlock("build", "-C", str(self.project), cache=self.cache)
        self.image_ids += [m.group(1) for _, t in lines if (m := re.match(r"built \S+ \((sha256:[0-9a-f]+)\)", t))]
        return seconds

    def envlock_build(self, note: str, state: str = "", before: str = "") -> float:
        seconds, lines = envlock("build", "-C", str(self.project), cache=self.cache)
        self.built_at = time.time()
        self.notes.append(f"envlock {note}, s per step: {phases(lines, seconds)}")
        if state:
            self.notes.append(f"envlock {note}: {self.sent(lines, state, before)}")
        if seeded := [text for _, text in lines if re.match(r"took \d+ bytecode files", text)]:
            self.notes.append(f"envlock {note}, bytecode seeded: {seeded[-1]}")
        return seconds

    def sent(self, lines: Lines, state: str, before: str) -> str:
        """The layers the build sent to the engine (the top ones: those whose chain the engine lacked) and their
        bytes, beside the bytes of the layers that are new since the image `before` (what changed)."""
        found = [m for _, t in lines if (m := re.search(r"into the engine \((\d+) of (\d+) layers\)", t))]
        if not found:
            return "no load (nothing sent)"
        count, total = int(found[-1].group(1)), int(found[-1].group(2))
        sizes = self.layer_sizes()
        layers = json.loads(docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", self.refs[state]) or "[]")
        earlier = json.loads(docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", self.refs[before]) or "[]")
        sent = sum(sizes.get(d, 0) for d in layers[len(layers) - count :])
        new = sum(sizes.get(d, 0) for d in layers if d not in earlier)
        return f"{count} of {total} layers sent, {sent / 1e6:.0f} MB; the layers new since {before}: {new / 1e6:.0f} MB"

    def layer_sizes(self) -> dict[str, int]:
        """The uncompressed size of each layer envlock's caches hold, by diff_id."""
        sizes = {}
        for meta in [*(self.cache / "layers").glob("*.json"), *(self.cache / "bases").glob("*.json")]:
            data = json.loads(meta.read_text(encoding="utf-8"))
            diff_id = data.get("diff_id") or data.get("diff-id")
            if diff_id and meta.with_suffix(".tar").is_file():
                sizes[diff_id] = meta.with_suffix(".tar").stat().st_size
        return sizes

    def envlock_light(self) -> float:
        self.write_project((LIGHT,))
        (self.project / "envlock.lock").write_text(self.locks["light"], encoding="utf-8")
        return self.envlock_build("one light package added", "light", "base")

    def envlock_heavy(self) -> float:
        self.write_project((LIGHT, self.heavy))
        (self.project / "envlock.lock").write_text(self.locks["heavy"], encoding="utf-8")
        return self.envlock_build("one heavy package added", "heavy", "light")

    def envlock_removed(self) -> float:
        self.write_project((LIGHT,))
        (self.project / "envlock.lock").write_text(self.locks["removed"], encoding="utf-8")
        return self.envlock_build("the heavy package removed again", "removed", "heavy")

    def envlock_reload(self) -> float:
        self.reload_bytes = layer_bytes(self.refs["light"])
        files = self.layer_files(self.refs["light"])
        docker("image", "rm", *self.refs.values())
        seconds = self.envlock_build("image removed, back from cached layers")
        start = time.perf_counter()
        for path in files:
            with path.open("rb") as handle:
                while handle.read(1 << 20):
                    pass
        size = sum(p.stat().st_size for p in files)
        self.cat = (size, time.perf_counter() - start)
        # What any load must at least do: write the layers' files out. `tar -x` of the same layer tars, base first,
        # into one scratch directory on this disk (the engine's overlay directories are on the same file system).
        scratch = self.root / "untar"
        scratch.mkdir()
        start = time.perf_counter()
        for path in files:
            run(["tar", "-xf", str(path), "-C", str(scratch)])
        self.untar = (size, time.perf_counter() - start)
        shutil.rmtree(scratch)
        return seconds

    def layer_files(self, ref: str) -> list[Path]:
        """envlock's cached files of the image's layers (base and layer store), by diff_id."""
        wanted = set(json.loads(docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", ref) or "[]"))
        found = []
        for meta in [*(self.cache / "layers").glob("*.json"), *(self.cache / "bases").glob("*.json")]:
            data = json.loads(meta.read_text(encoding="utf-8"))
            if (data.get("diff_id") or data.get("diff-id")) in wanted and meta.with_suffix(".tar").is_file():
                found.append(meta.with_suffix(".tar"))
        return found

    def compiled_yet(self, ref: str) -> str:
        """Whether the image's background bytecode compile has finished (its folder's marker), and its pyc count."""
        folder = self.bytecode_folder(ref)
        done = "done" if (folder / ".compiled").exists() else "still running"
        return f"{done}, {sum(1 for _ in folder.rglob('*.pyc'))} pycs in its folder"

    def bytecode_folder(self, ref: str) -> Path:
        return self.cache / "pyc" / docker("image", "inspect", "-f", "{{.Id}}", ref).removeprefix("sha256:")

    def envlock_first_import(self) -> float:
        state = self.compiled_yet(self.refs["light"])
        start = time.perf_counter()
        seconds = self.envlock_import()
        wall = time.perf_counter() - start
        self.notes.append(f"envlock first start: the image's compile {state}; `envlock run` took {wall:.2f} s in all")
        marker = self.bytecode_folder(self.refs["light"]) / ".compiled"
        deadline = time.perf_counter() + 120
        while not marker.exists() and time.perf_counter() < deadline:
            time.sleep(0.5)
        if marker.exists():  # its mtime: when the compile ended, beside the build's end (a first start overlaps it)
            self.notes.append(f"envlock: the image's compile ended {marker.stat().st_mtime - self.built_at:.2f} s "
                              "after its build returned")  # fmt: skip
        return seconds

    def envlock_import(self) -> float:
        # --no-gpus: the torch set's lock is CUDA; on a CPU host its preflight refuses a run that wants GPUs
        command = [
            "run",
            "-C",
            str(self.project),
            "--no-gpus",
            "--",
            "python",
            "-c",
            TIMER.format(statement=self.statement),
        ]
        return import_seconds("\n".join(t for _, t in envlock(*command, cache=self.cache)[1]))

    def envlock_side(self) -> None:
        tool = "envlock"
        print(f"  {tool}", file=sys.stderr)
        if not self.step("cold", tool, self.envlock_cold):
            return
        self.step("size", tool, lambda: size_mb(self.refs["base"]))
        self.step("no-op", tool, lambda: self.envlock_build("no-op rebuild"))
        if not self.step("light", tool, self.envlock_light):
            return
        if self.step("reload", tool, self.envlock_reload):
            self.put("reload-gbs", tool, self.reload_bytes / 1e9 / float(self.values["reload", tool]))
        self.step("import-1", tool, self.envlock_first_import)
        self.step("import-2", tool, lambda: statistics.median(self.envlock_import() for _ in range(3)))
        if "heavy" in self.locks and self.step("heavy", tool, self.envlock_heavy):  # last: the light image's above
            self.step("removed", tool, self.envlock_removed)

    # Dockerfile

    def docker_build(self, state: str, *flags: str) -> float:
        requirements = "".join(f"{name}=={version}\n" for name, version in self.pins[state])
        (self.context / "requirements.txt").write_text(requirements, encoding="utf-8")
        command = ["docker", "build", "--force-rm", *flags, "-t", f"{DOCKER_REPO}:{state}", str(self.context)]
        return run(command, os.environ | {"DOCKER_BUILDKIT": "0"})[0]

    def docker_reload(self) -> float:
        ref = f"{DOCKER_REPO}:light"
        self.docker_bytes = layer_bytes(ref)
        saved = self.root / "dockerfile-image.tar"
        run(["docker", "save", "-o", str(saved), ref])
        docker("image", "rm", f"{DOCKER_REPO}:base", ref)
        seconds = run(["docker", "load", "-i", str(saved)])[0]
        saved.unlink()
        return seconds

    def docker_import(self) -> float:
        probe = TIMER.format(statement=self.statement)
        ref = f"{DOCKER_REPO}:light"
        return import_seconds(
            "\n".join(t for _, t in run(["docker", "run", "--rm", ref, "/opt/venv/bin/python", "-c", probe])[1])
        )

    def docker_side(self) -> None:
        tool = "Dockerfile"
        print(f"  {tool}", file=sys.stderr)
        docker("image", "rm", *(f"{DOCKER_REPO}:{state}" for state in STATES))
        if not self.step("cold", tool, lambda: self.docker_build("base", "--no-cache")):
            return
        self.step("size", tool, lambda: size_mb(f"{DOCKER_REPO}:base"))
        self.step("no-op", tool, lambda: self.docker_build("base"))
        if not self.step("light", tool, lambda: self.docker_build("light")):
            return
        if self.step("reload", tool, self.docker_reload):
            self.put("reload-gbs", tool, self.docker_bytes / 1e9 / float(self.values["reload", tool]))
        self.step("import-1", tool, self.docker_import)
        self.step("import-2", tool, lambda: statistics.median(self.docker_import() for _ in range(3)))
        if "heavy" in self.locks and self.step("heavy", tool, lambda: self.docker_build("heavy")):
            self.step("removed", tool, lambda: self.docker_build("removed"))

    def run_all(self) -> None:
        self.envlock_side()
        self.docker_side()
        print("  envlock second cold build (empty caches, for the image ID)", file=sys.stderr)
        try:
            self.envlock_cold()
        except Failed as exc:
            self.failed.append("envlock second cold build")
            self.notes.append(f"envlock second cold build: {exc}")

    def cleanup(self) -> None:
        # A background bytecode compile of one of these images (the last cold build starts one) holds its image.
        for ref in self.refs.values():
            if compiling := docker("ps", "-aq", "--filter", f"label={BYTECODE_LABEL}", "--filter", f"ancestor={ref}"):
                docker("rm", "-f", *compiling.split())
        docker("image", "rm", *self.refs.values(), *(f"{DOCKER_REPO}:{state}" for state in STATES))
        if leftovers := docker("images", "-a", "-q", "--filter", f"label={LABEL}").split():
            docker("image", "rm", "-f", *leftovers)


def fmt(value: float | str | None, digits: int = 2) -> str:
    return "n/a" if value is None else value if isinstance(value, str) else f"{value:.{digits}f}"


def number(value: float | str | None) -> float | None:
    return value if isinstance(value, float) else None


def report(bench: Bench) -> None:
    version = subprocess_out([str(BIN / "envlock"), "--version"])
    print(f"{version} | Docker engine {docker('version', '-f', '{{.Server.Version}}')} (legacy builder)")
    print(f"{bench.stack} set, {PLATFORM}: {', '.join(f'{n} {v}' for n, v in bench.pins['base'])}")
    heavy = f"; heavy change: + {bench.heavy.replace('==', ' ')}, then removed" if "heavy" in bench.locks else ""
    print(f"light change: + {LIGHT.replace('==', ' ')}{heavy}; imports timed: {bench.statement}; one run of each cell")
    rows: list[tuple[str, ...]] = [("", "envlock", "Dockerfile", "envlock/Dockerfile")]
    for row, label in ROWS.items():
        mine, theirs = bench.values.get((row, "envlock")), bench.values.get((row, "Dockerfile"))
        a, b = number(mine), number(theirs)
        digits = 1 if row == "size" else 3 if row.startswith("import") else 2
        rows.append((label, fmt(mine, digits), fmt(theirs, digits), f"{a / b:.2f}x" if a and b else "n/a"))
    print_table(rows)
    print()
    light = number(bench.values.get(("light", "envlock")))
    second = [number(bench.values.get(("import-2", tool))) for tool in ("envlock", "Dockerfile")]
    imports = second[0] / second[1] if second[0] and second[1] else None
    cat = bench.cat
    cat_gbs = cat[0] / 1e9 / cat[1] if cat and cat[1] > 0 else None
    reload_gbs = number(bench.values.get(("reload-gbs", "envlock")))
    targets = (
        (f"one light package added in {LIGHT_TARGET:.0f} s or less", light, LIGHT_TARGET, f"{fmt(light)} s"),
        (f"imports at later starts within {IMPORT_TARGET}x of the Dockerfile's", imports, IMPORT_TARGET,
         f"{fmt(imports)}x"),
    )  # fmt: skip
    for text, value, limit, shown in targets:
        print(f"target: {text}: {'n/a' if value is None else 'PASS' if value <= limit else 'MISS'} ({shown})")
    untar = bench.untar
    untar_gbs = untar[0] / 1e9 / untar[1] if untar and untar[1] > 0 else None
    if reload_gbs and cat_gbs and untar_gbs:
        print(
            f"reload from cached layers: {reload_gbs:.2f} GB/s; cat of the same layer files {cat_gbs:.2f} GB/s "
            f"({reload_gbs / cat_gbs:.0%}); tar -x of them into a directory {untar_gbs:.2f} GB/s "
            f"({reload_gbs / untar_gbs:.0%}: the files any load must write)"
        )
    ids = sorted(set(bench.image_ids))
    same = "yes" if len(bench.image_ids) >= 2 and len(ids) == 1 else "NO" if len(ids) > 1 else "n/a"
    print(
        f"two cold envlock builds from empty caches give the same image ID: {same} ({', '.join(i[:19] for i in ids)})"
    )
    print_notes(bench.notes)


def subprocess_out(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sets = parser.add_mutually_exclusive_group()
    sets.add_argument("--torch", action="store_true", help="torch 2.5.1 + CUDA wheels (~3 GB, downloaded once)")
    sets.add_argument(
        "--many", action="store_true", help="torch + transformers + datasets, 53 packages (~3.1 GB, downloaded once)"
    )
    parser.add_argument(
        "--heavy", default=HEAVY, metavar="SPEC", help=f"--many's heavy package to add, pinned (default {HEAVY})"
    )
    args = parser.parse_args(argv)
    if not (BIN / "envlock").exists():
        parser.error(f"envlock not found in {BIN}: run this with the project's .venv/bin/python")
    if not docker("version", "-f", "{{.Server.Version}}"):
        parser.error("the Docker engine is not reachable (`docker info`)")
    if not CA_BUNDLE.is_file():
        parser.error(f"{CA_BUNDLE} not found: the Dockerfile copies the host's CA bundle for pip")
    stack = "torch" if args.torch else "many" if args.many else "digits"

    def make(root: Path) -> Bench:
        _, lines = envlock("base", "build", RECIPE, "--load")
        base_ref = next((text.split()[-1] for _, text in lines if text.startswith("loaded as ")), "")
        if not base_ref:
            raise Failed("FAIL", f"envlock base build {RECIPE} --load did not say what it loaded")
        return Bench(root, base_ref, stack, args.heavy)

    steps: list[tuple[str, Callable[[Bench], None]]] = [("the builds", Bench.run_all)]
    return run_bench("envlock-bench-bigstack-", make, steps, report)


if __name__ == "__main__":
    sys.exit(main())
