"""Benchmark `envlock run -- true` against `docker run --rm IMAGE true`: what envlock adds around a container.

Run from the repository root (stdlib only; needs the Docker engine, and network access to PyPI for the lock):

    .venv/bin/python benchmarks/run.py [--repeat N]

A throw-away project pinning six==1.16.0 for linux/amd64 is locked and built, untimed, with an ENVLOCK_CACHE_DIR
of its own (holding only the user's bases/, hard-linked). Then N rounds, each timing in turn: `envlock run -C
PROJECT -- true`, `docker run --rm IMAGE_ID true` (the Docker CLI on PATH), `envlock --help` and `python -c pass`
(the venv's interpreter: the floor of any Python CLI), the no-op `envlock build -C PROJECT` and its anchor, a
fully cached `docker build` (legacy builder) of a two-line Dockerfile FROM the image; and, for the notes, `envlock
runs`, `docker version`, `docker run` with the options envlock's launcher passes, and, when PYTHONDONTWRITEBYTECODE
is set, `envlock run -- true` with bytecode cached in a temp PYTHONPYCACHEPREFIX; and two floors, no envlock in
them: Python importing typer and docker-py and making the requests envlock's launcher makes, and the same requests
through the standard library's http.client on the engine's socket (what the ratio would be before envlock does
any work of its own, with and without docker-py). One more `envlock run -- true`
is instrumented in-process (wall seconds per phase: imports, Docker calls, host probe, records, container steps)
and one runs under `python -X importtime` (import seconds per top-level package). Each cell is the best and the
median of N. One table is printed, then the targets: (envlock run -- true) / (docker run --rm IMAGE true) <= 1.3
on the medians; the no-op envlock build under 0.3 s (its ratio to the cached docker build beside it); envlock --help
under 0.3 s. The image, the cached docker build's tag, any container left from it and the directories made here are
removed. Exit status 1 when any command failed or timed out.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from common import (
    BIN,
    Cell,
    Failed,
    best_median,
    built_image,
    docker,
    docker_bench_args,
    print_notes,
    print_table,
    ratios,
    run_bench,
    seed_cache,
    timed,
)

NAME, PLATFORM, DEPENDENCY = "envlock-bench-run", "linux/amd64", "six==1.16.0"
PYPROJECT = f'[project]\nname = "{NAME}"\ndependencies = ["{DEPENDENCY}"]\n[tool.envlock]\nplatforms = ["{PLATFORM}"]\n'
RATIO_TARGET, HELP_TARGET, NOOP_TARGET = 1.3, 0.3, 0.3
DOCKER_NOOP_TAG = f"{NAME}-dockerfile:noop"  # the anchor's image: one cached LABEL step over envlock's image
LABELS = {  # measurement key -> what it is called in the table and notes
    "run": "envlock run -- true",
    "docker": "docker run --rm IMAGE true",
    "help": "envlock --help",
    "python": "python -c pass (interpreter floor)",
    "build": "envlock build (no-op)",
    "docker-build": "docker build, fully cached",
    "runs": "envlock runs",
    "docker-version": "docker version (Docker CLI start + one API call)",
    "docker-options": "docker run --rm with envlock's options",
    "run-cached": "envlock run -- true, bytecode cached",
    "floor-dockerpy": "floor: typer + docker-py, envlock's calls, no envlock",
    "floor-socket": "floor: typer + stdlib HTTP on the socket, no envlock",
}
ENVLOCK_RUNS = ("run", "run-cached")  # the keys that make a run record
# The floors: what any Python CLI built on envlock's two libraries pays before doing envlock's work. Both import
# typer (the CLI) and then make the requests envlock's launcher makes for `run -- true` (create with the same
# kind of options, auto-removed; attach; wait from a thread; start; read the stream): one through docker-py with
# envlock's fixed API version, one through the standard library's http.client on the engine's socket.
FLOOR_DOCKERPY = r"""
import sys, threading, typer, docker
image, project, uid = sys.argv[1], sys.argv[2], sys.argv[3]
api = docker.from_env(version="1.41").api
host = api.create_host_config(
    mounts=[docker.types.Mount(target="/work", source=project, type="bind")],
    tmpfs={"/tmp/envlock-home": "mode=1777,exec"}, auto_remove=True,
)
made = api.create_container(image, ["true"], labels={"dev.envlock.run-id": "floor"}, working_dir="/work",
                            user=uid, environment={"PYTHONHASHSEED": "0"}, detach=True, host_config=host)["Id"]
stream = api.attach(made, stdout=True, stderr=True, stream=True, logs=True, demux=True)
done = []
waiter = threading.Thread(target=lambda: done.append(api.wait(made, condition="removed")), daemon=True)
waiter.start()
api.start(made)
for _ in stream:
    pass
waiter.join()
sys.exit(done[0]["StatusCode"])
"""
FLOOR_SOCKET = r"""
import http.client, json, socket, struct, sys, threading, typer
image, project, uid = sys.argv[1], sys.argv[2], sys.argv[3]


class Engine(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect("/var/run/docker.sock")


def call(method, path, body=None):
    connection = Engine("localhost", timeout=60)
    connection.request(method, "/v1.41" + path, None if body is None else json.dumps(body),
                       {"Content-Type": "application/json"})
    return json.loads(connection.getresponse().read() or b"null")


made = call("POST", "/containers/create", {
    "Image": image, "Cmd": ["true"], "Labels": {"dev.envlock.run-id": "floor"}, "WorkingDir": "/work", "User": uid,
    "Env": ["PYTHONHASHSEED=0"], "HostConfig": {"AutoRemove": True, "Tmpfs": {"/tmp/envlock-home": "mode=1777,exec"},
    "Mounts": [{"Target": "/work", "Source": project, "Type": "bind"}]}})["Id"]
raw = socket.socket(socket.AF_UNIX)
raw.connect("/var/run/docker.sock")
raw.sendall(f"POST /v1.41/containers/{made}/attach?stream=1&stdout=1&stderr=1&logs=1 HTTP/1.1\r\n"
            "Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n".encode())
frames = raw.makefile("rb")
while frames.readline() not in (b"\r\n", b""):
    pass
done = []
waiter = threading.Thread(target=lambda: done.append(call("POST", f"/containers/{made}/wait?condition=removed")),
                          daemon=True)
waiter.start()
call("POST", f"/containers/{made}/start")
while len(header := frames.read(8)) == 8:
    frames.read(struct.unpack(">I", header[4:])[0])
waiter.join()
sys.exit(done[0]["StatusCode"])
"""
# One `envlock run -- true` in-process, wall seconds per phase. Nested phases are exclusive: a phase's time leaves
# out the phases and imports inside it. Targets not found (renamed) are listed in "missing", not fatal.
PROBE = r"""
import builtins, importlib, json, sys, time

START, STARTED = time.perf_counter(), time.time()
project, out = sys.argv[1], sys.argv[2]
TARGETS = [
    ("envlock.lock.spec", "load_spec", "project + lock"),
    ("envlock.lock.project", "check", "project + lock"),
    ("envlock.image.plan", "plan_image", "project + lock"),
    ("envlock.image.catalog", "read_images", "project + lock"),
    ("docker", "from_env", "Docker connect (/version, /_ping)"),
    ("docker.api.client", "APIClient.ping", "Docker connect (/version, /_ping)"),
    ("envlock.engine.docker", "DockerEngine.image_id", "image check (one inspect)"),
    ("envlock.run.hostprobe", "probe_host", "host probe (NVML, Docker /version)"),
    ("envlock.run.gitstate", "git_state", "git state"),
    ("envlock.run.records", "RunStore.settle_orphans", "run records"),
    ("envlock.run.records", "RunStore.start", "run records"),
    ("envlock.run.records", "RunStore.save", "run records"),
    ("envlock.engine.launch", "DockerLauncher.run", "container attach + output"),
    ("docker.api.container", "ContainerApiMixin.create_container", "container create"),
    ("docker.models.containers", "Container.start", "container start"),
    ("docker.models.containers", "Container.wait", "container wait"),
    ("docker.models.containers", "Container.remove", "container remove"),
]
spent, stack, missing = {}, [], []


def enter(label):
    stack.append([label, time.perf_counter(), 0.0])


def leave():
    label, began, inner = stack.pop()
    elapsed = time.perf_counter() - began
    spent[label] = spent.get(label, 0.0) + elapsed - inner
    if stack:
        stack[-1][2] += elapsed


def timed(function, label):
    def wrapper(*args, **kwargs):
        enter(label)
        try:
            return function(*args, **kwargs)
        finally:
            leave()

    return wrapper


real_import = builtins.__import__


def timed_import(*args, **kwargs):
    if stack and stack[-1][0] == "imports":
        return real_import(*args, **kwargs)
    enter("imports")
    try:
        return real_import(*args, **kwargs)
    finally:
        leave()


builtins.__import__ = timed_import
enter("imports")
modules = {name: importlib.import_module(name) for name in ["envlock.cli.app", *dict.fromkeys(t[0] for t in TARGETS)]}
leave()
for module, attribute, label in TARGETS:
    owner, _, name = attribute.rpartition(".")
    try:
        holder = getattr(modules[module], owner) if owner else modules[module]
        setattr(holder, name, timed(getattr(holder, name), label))
    except AttributeError:
        missing.append(f"{module}.{attribute}")
enter("CLI, typer and envlock's glue")
code = modules["envlock.cli.app"].run(["run", "-C", project, "--", "true"])
leave()
found = {"code": code, "total": time.perf_counter() - START, "spent": spent, "missing": missing}
with open(out, "w", encoding="utf-8") as handle:
    json.dump(found | {"started": STARTED, "ended": time.time()}, handle)
"""
PHASE_ORDER = (
    "imports",
    "CLI, typer and envlock's glue",
    "project + lock",
    "Docker connect (/version, /_ping)",
    "image check (one inspect)",
    "host probe (NVML, Docker /version)",
    "git state",
    "run records",
    "container create",
    "container attach + output",
    "container start",
    "container wait",
    "container remove",
)


def uncached_modules() -> tuple[int, int]:
    """How many of envlock's own modules have no cached bytecode beside them, and how many there are."""
    spec = importlib.util.find_spec("envlock")
    if spec is None or spec.origin is None:
        return 0, 0
    sources = sorted(Path(spec.origin).parent.glob("*.py"))
    missing = [p for p in sources if not Path(importlib.util.cache_from_source(str(p))).exists()]
    return len(missing), len(sources)


def import_owners(importtime: str) -> dict[str, float]:
    """Import self-times (s) per top-level package; stdlib modules go to the nearest non-stdlib importer."""
    entries = []
    for line in importtime.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if line.startswith("import time:") and len(fields) == 3 and fields[0].strip().isdigit():
            depth = (len(fields[2]) - len(fields[2].lstrip()) - 1) // 2
            entries.append((depth, fields[2].strip(), int(fields[0]) / 1e6))
    per: dict[str, float] = defaultdict(float)
    owners: list[tuple[int, str]] = []  # (depth, owner) of the enclosing imports
    for depth, name, seconds in reversed(entries):  # reversed, an import comes before the ones it made
        while owners and owners[-1][0] >= depth:
            owners.pop()
        top = name.split(".")[0]
        stdlib = bool({top, top.lstrip("_")} & sys.stdlib_module_names) or top in sys.builtin_module_names
        owner = (owners[-1][1] if owners else "stdlib") if stdlib else top
        owners.append((depth, owner))
        per[owner] += seconds
    return per


class Bench:
    """The throw-away project, its private envlock cache, the image, and what the rounds measured."""

    def __init__(self, root: Path) -> None:
        self.root, self.project, self.cache = root, root / "project", root / "cache"
        self.env = os.environ | {"ENVLOCK_CACHE_DIR": str(self.cache)}
        self.reference, self.image_id = "", ""
        self.samples: dict[str, list[float]] = {}
        self.failed: dict[str, str] = {}
        self.notes: list[str] = []
        self.envlock_runs = 0  # every `envlock run` started here, each should leave one record

    def envlock(self, *args: str) -> str:
        return timed([str(BIN / "envlock"), *args], self.env)[1]

    def setup(self) -> None:
        """Lock and build the project (untimed); remember the image's reference and ID."""
        self.project.mkdir()
        (self.project / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
        seed_cache(self.cache)
        self.envlock("lock", "-C", str(self.project))
        self.reference, self.image_id = built_image(self.envlock("build", "-C", str(self.project)))
        # The anchor of the no-op build: a Dockerfile whose one step the builder has cached after this first build.
        context = self.root / "dockerfile"
        context.mkdir()
        dockerfile = f"FROM {self.image_id}\nLABEL dev.envlock.benchmark=run\n"
        (context / "Dockerfile").write_text(dockerfile, encoding="utf-8")
        timed(self.docker_build_command(), self.env | {"DOCKER_BUILDKIT": "0"})

    def docker_build_command(self) -> list[str]:
        return ["docker", "build", "-q", "-t", DOCKER_NOOP_TAG, str(self.root / "dockerfile")]

    def commands(self) -> dict[str, tuple[list[str], dict[str, str]]]:
        """Per measurement key: the command and its environment, in the order each round runs them."""
        envlock, project = str(BIN / "envlock"), str(self.project)
        twin = ["docker", "run", "--rm", "-v", f"{self.project.resolve()}:/work", "-w", "/work"]
        twin += ["-u", f"{os.getuid()}:{os.getgid()}", "--label", "dev.envlock.run-id=bench"]
        for variable in ("PYTHONHASHSEED=0", "ENVLOCK_SEED=0", "CUBLAS_WORKSPACE_CONFIG=:4096:8"):
            twin += ["-e", variable]
        twin += ["-e", "ENVLOCK_RUN_ID=bench", "-e", f"ENVLOCK_IMAGE_ID={self.image_id}", "-e", "ENVLOCK_LOCK_HASH=x"]
        run = [envlock, "run", "-C", project, "--", "true"]
        floor = [str(self.project.resolve()), f"{os.getuid()}:{os.getgid()}"]
        found = {
            "run": (run, self.env),
            "docker": (["docker", "run", "--rm", self.image_id, "true"], self.env),
            "help": ([envlock, "--help"], self.env),
            "python": ([sys.executable, "-c", "pass"], self.env),
            "build": ([envlock, "build", "-C", project], self.env),
            "docker-build": (self.docker_build_command(), self.env | {"DOCKER_BUILDKIT": "0"}),
            "runs": ([envlock, "runs", "-C", project], self.env),
            "docker-version": (["docker", "version", "-f", "{{.Server.Version}}"], self.env),
            "docker-options": ([*twin, self.image_id, "true"], self.env),
            "floor-dockerpy": ([sys.executable, "-c", FLOOR_DOCKERPY, self.image_id, *floor], self.env),
        }
        if Path("/var/run/docker.sock").is_socket() and not os.environ.get("DOCKER_HOST"):
            found["floor-socket"] = ([sys.executable, "-c", FLOOR_SOCKET, self.image_id, *floor], self.env)
        if os.environ.get("PYTHONDONTWRITEBYTECODE"):
            cached = {k: v for k, v in self.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
            found["run-cached"] = (run, cached | {"PYTHONPYCACHEPREFIX": str(self.root / "pycache")})
        return found

    def measure(self, repeat: int) -> None:
        """Every command once per round (interleaved, so drift hits all alike); a failed one is not retried."""
        commands = self.commands()
        if "run-cached" in commands:  # untimed: fills the temp bytecode cache
            self.once("run-cached", *commands["run-cached"])
        for i in range(repeat):
            print(f"  round {i + 1}/{repeat}", file=sys.stderr)
            for key, (command, env) in commands.items():
                if key not in self.failed and (seconds := self.once(key, command, env)) is not None:
                    self.samples.setdefault(key, []).append(seconds)

    def once(self, key: str, command: list[str], env: dict[str, str]) -> float | None:
        self.envlock_runs += key in ENVLOCK_RUNS
        try:
            seconds, output = timed(command, env)
        except Failed as exc:
            self.failed[key] = exc.label
            self.notes.append(f"{LABELS[key]}: {exc}")
            return None
        if key == "build" and "already built" not in output:
            self.notes.append("envlock build was not a no-op (no `already built`): it built again")
        return seconds

    def cell(self, key: str) -> Cell:
        values = self.samples.get(key)
        return (min(values), statistics.median(values)) if values else self.failed.get(key, "n/a")

    def phases(self) -> None:
        """One instrumented `envlock run -- true`: where its wall time goes, by phase."""
        out = self.root / "phases.json"
        command = [sys.executable, "-c", PROBE, str(self.project), str(out)]
        self.envlock_runs += 1
        launched = time.time()
        try:
            wall = timed(command, self.env)[0]
            found = json.loads(out.read_text(encoding="utf-8"))
        except (Failed, OSError, ValueError) as exc:
            self.notes.append(f"instrumented envlock run: {exc}")
            return
        finished, spent = time.time(), dict[str, float](found["spent"])
        parts = [f"interpreter start {found['started'] - launched:.3f}"]
        parts += [f"{label} {spent[label]:.3f}" for label in PHASE_ORDER if label in spent]
        parts += [f"{label} {seconds:.3f}" for label, seconds in spent.items() if label not in PHASE_ORDER]
        parts += [f"interpreter exit (module teardown, final garbage collection) {finished - found['ended']:.3f}"]
        container = sum(s for label, s in spent.items() if label.startswith("container "))
        self.notes.append(
            f"envlock run -- true, one instrumented run, {wall:.3f} s wall (exit {found['code']}), s per phase: "
            + ", ".join(parts)
        )
        self.notes.append(
            f"  of which container create..remove through docker-py {container:.3f} s; everything else "
            f"(envlock's own overhead) {wall - container:.3f} s"
        )
        if found["missing"]:
            self.notes.append(f"  not instrumented (not found): {', '.join(found['missing'])}")

    def imports(self) -> None:
        """One `envlock run -- true` under -X importtime: import self-times summed per top-level package."""
        command = [sys.executable, "-X", "importtime", str(BIN / "envlock"), "run", "-C", str(self.project)]
        self.envlock_runs += 1
        try:
            output = timed([*command, "--", "true"], self.env)[1]
        except Failed as exc:
            self.notes.append(f"envlock run under -X importtime: {exc}")
            return
        per = import_owners(output)
        top = sorted(per.items(), key=lambda item: -item[1])[:10]
        shown = ", ".join(f"{name} {seconds:.3f}" for name, seconds in top)
        rest = sum(per.values()) - sum(s for _, s in top)
        self.notes.append(
            f"imports of envlock run -- true, s (-X importtime self times, inflated by the tracing; a standard "
            f"library module counts for the package that imported it first): {sum(per.values()):.3f} in all: "
            f"{shown}, others {rest:.3f}"
        )

    def count_records(self) -> None:
        root = self.project / ".envlock" / "runs"
        statuses: Counter[str] = Counter()
        for directory in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
            try:
                record = json.loads((directory / "record.json").read_text(encoding="utf-8"))
                statuses[f"{record['status']} exit {record['exit_code']}"] += 1
            except (OSError, ValueError, KeyError):
                statuses["unreadable"] += 1
        made = sum(statuses.values())
        shown = ", ".join(f"{n} {status}" for status, n in statuses.items()) or "none"
        verdict = "one each" if made == self.envlock_runs else "MISMATCH"
        self.notes.append(
            f"run records: {made} written for {self.envlock_runs} `envlock run`s ({verdict}): {shown}; removed with "
            "the project"
        )

    def cleanup(self) -> None:
        """Containers from the image (none expected), then the image itself."""
        if not self.image_id:
            return
        if leftovers := docker("ps", "-a", "-q", "--filter", f"ancestor={self.image_id}").split():
            docker("rm", "-f", *leftovers)
            self.notes.append(f"{len(leftovers)} container(s) of the image were left behind: removed")
        docker("image", "rm", self.reference, DOCKER_NOOP_TAG)
        if docker("image", "inspect", "-f", "{{.Id}}", self.image_id):
            self.notes.append(f"image {self.image_id[:19]} still in the engine under another name: kept")


def verdict(value: tuple[float, float] | None, limit: float, unit: str) -> str:
    if value is None:
        return "n/a (not measured)"
    best, median = value

    def fmt(v: float) -> str:
        return f"{v:.2f}x" if unit == "x" else f"{v:.3f} s"

    return f"{'PASS' if median <= limit else 'MISS'} (median {fmt(median)}; best {fmt(best)})"


def report(bench: Bench, repeat: int) -> None:
    version = subprocess.run([str(BIN / "envlock"), "--version"], capture_output=True, text=True, check=False)
    engine, client = docker("version", "-f", "{{.Server.Version}}"), docker("version", "-f", "{{.Client.Version}}")
    print(f"{version.stdout.strip()} | Docker engine {engine}, CLI {client} ({shutil.which('docker')})")
    print(f"{NAME} ({DEPENDENCY}, {PLATFORM}): {bench.reference} {bench.image_id[:19]}")
    print(f"best and median of {repeat} run(s) per cell, the commands interleaved round by round")
    rows = [("", "best s", "median s")]
    for key in ("run", "docker"):
        cell = bench.cell(key)
        rows.append((LABELS[key], *((f"{v:.3f}" for v in cell) if isinstance(cell, tuple) else (cell, cell))))
    over = ratios(bench.cell("run"), bench.cell("docker"))
    rows.append(("ratio envlock run / docker run", *((f"{v:.2f}x" for v in over) if over else ("n/a", "n/a"))))
    for key in ("build", "docker-build"):
        cell = bench.cell(key)
        rows.append((LABELS[key], *((f"{v:.3f}" for v in cell) if isinstance(cell, tuple) else (cell, cell))))
    noop = ratios(bench.cell("build"), bench.cell("docker-build"))
    rows.append(("ratio envlock build / docker build", *((f"{v:.2f}x" for v in noop) if noop else ("n/a", "n/a"))))
    for key in ("help", "python"):
        cell = bench.cell(key)
        rows.append((LABELS[key], *((f"{v:.3f}" for v in cell) if isinstance(cell, tuple) else (cell, cell))))
    print_table(rows)
    print()
    help_cell = bench.cell("help")
    helped = verdict(None if isinstance(help_cell, str) else help_cell, HELP_TARGET, " s")
    print(
        f"target: overhead ratio (envlock run -- true) / (docker run --rm IMAGE true) <= {RATIO_TARGET}: "
        f"{verdict(over, RATIO_TARGET, 'x')}"
    )
    build_cell = bench.cell("build")
    print(
        f"target: no-op envlock build under {NOOP_TARGET} s: "
        f"{verdict(None if isinstance(build_cell, str) else build_cell, NOOP_TARGET, ' s')}"
    )
    print(f"target: envlock --help under {HELP_TARGET} s: {helped}")
    print_notes(breakdown(bench) + bench.notes)


def breakdown(bench: Bench) -> list[str]:
    """The subprocess-level notes: no-op build, runs, Docker CLI floor, envlock's options, bytecode."""
    notes = []
    explained = {
        "runs": f"CLI start + reading the records, 1 to {bench.envlock_runs} of them, as envlock run does too",
        "docker-version": "the Go CLI's own floor",
        "docker-options": "-v PROJECT:/work -w /work -u UID:GID --label, 6 -e: like envlock's container",
        "floor-dockerpy": "python + typer + docker-py making envlock's requests, nothing else",
        "floor-socket": "the same requests without docker-py: http.client on /var/run/docker.sock",
    }
    for key, why in explained.items():
        if key in bench.samples:
            notes.append(f"{LABELS[key]}: {best_median(bench.samples[key])} ({why})")
    run, twin = bench.cell("run"), bench.cell("docker-options")
    if isinstance(run, tuple) and isinstance(twin, tuple):
        allowed = (RATIO_TARGET - 1) * twin[1]
        notes.append(
            f"envlock run median - docker run with its options median = {run[1] - twin[1]:.3f} s outside the "
            f"container; the {RATIO_TARGET}x target leaves about {allowed:.3f} s for it"
        )
    for key in ("floor-dockerpy", "floor-socket"):
        if (floor := ratios(bench.cell(key), bench.cell("docker"))) is not None:
            notes.append(f"{LABELS[key]} / docker run --rm: median {floor[1]:.2f}x, best {floor[0]:.2f}x")
    if "run-cached" in bench.samples:
        missing, total = uncached_modules()
        notes.append(
            f"PYTHONDONTWRITEBYTECODE is set here and {missing} of envlock's {total} modules have no cached bytecode, "
            f"so they are compiled at every start; with bytecode cached (temp PYTHONPYCACHEPREFIX) "
            f"{LABELS['run']}: {best_median(bench.samples['run-cached'])}"
        )
    return notes


def main(argv: list[str] | None = None) -> int:
    _, args = docker_bench_args(__doc__, 10, "runs per cell; the best and the median are shown", argv)
    steps: list[tuple[str, Callable[[Bench], None]]] = [
        ("setup", Bench.setup),
        ("the rounds", lambda bench: bench.measure(args.repeat)),
        ("the phases", Bench.phases),
        ("the imports", Bench.imports),
        ("counting records", Bench.count_records),
    ]
    return run_bench("envlock-bench-run-", Bench, steps, lambda bench: report(bench, args.repeat))


if __name__ == "__main__":
    sys.exit(main())
