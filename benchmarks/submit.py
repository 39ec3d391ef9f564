"""Benchmark `envlock submit --slurm` against plain `sbatch`, and what `envlock run --mlflow` adds to a run.

Run from the repository root with the project's venv (it reads Slurm's final job states from
envlock.cluster.slurm); needs the Docker engine, the local Slurm cluster started by scripts/services.sh, the
venv's `mlflow` server (the dev extra) and network access to PyPI for the lock:

    .venv/bin/python benchmarks/submit.py [--repeat N]

A throw-away project pinning six==1.16.0 for linux/amd64 is locked and built, untimed, with an ENVLOCK_CACHE_DIR
of its own (holding only the user's bases/, hard-linked), and `mlflow server` (the venv's: sqlite backend and
artifacts in a temp directory, one worker, MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false) is started on a free loopback
port and waited for (GET /health answering 200, up to 60 s). Every command runs with MLFLOW_* removed from its
environment. Then N rounds, each timing the two Slurm measurements (taking turns to go first, each submitted after
Slurm was left idle 5 s: slurmctld starts pending jobs on a cadence of its own, in about 1 s steps, so the time since
the last job ended would sway the latency), then the three local runs:
- `envlock submit -C PROJECT --slurm -- true`, from the start of the command until the run record's status is final
  (record.json read every 0.1 s); and, separately, the submit command's own wall time. The job is then waited for,
  untimed, until Slurm says it ended (the gap after the record is in the notes), so no job overlaps the next one;
- `sbatch --parsable --output TMP/slurm-%j.out --wrap "docker run --rm IMAGE_ID true"`, from the start of the command
  until `scontrol show job ID` says JobState=COMPLETED (asked every 0.1 s); and sbatch's own wall time;
- `envlock run -C PROJECT --mlflow http://127.0.0.1:PORT -- true`, `envlock run -C PROJECT -- true` and
  `docker run --rm IMAGE_ID true` (the Docker CLI on PATH).
Each cell is the best and the median of N. One table is printed, envlock beside the alternative with the ratio of
the medians: submit -> finished (envlock submit / sbatch), the submit command alone (envlock submit / sbatch), the
MLflow overhead (envlock run --mlflow / envlock run) and, for scale, envlock run / docker run; then notes (absolute
differences, the Slurm end after the record, run records and MLflow runs made). Slurm jobs still queued, the server
(its process group), the image, any container left from it and the directories made here are removed. Exit status
1 when any command failed or timed out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from common import (
    BIN,
    TIMEOUT,
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

from envlock.cluster.slurm import FINAL_STATES

NAME, PLATFORM, DEPENDENCY = "envlock-bench-submit", "linux/amd64", "six==1.16.0"
PYPROJECT = f'[project]\nname = "{NAME}"\ndependencies = ["{DEPENDENCY}"]\n[tool.envlock]\nplatforms = ["{PLATFORM}"]\n'
QUEUED = re.compile(r"run (\S+): queued as Slurm job (\d+)")
POLL, HEALTH_WAIT, SETTLE = 0.1, 60.0, 5.0
RECORD_FINAL = frozenset({"finished", "failed", "interrupted"})
LABELS = {  # measurement key -> what it is called in the notes
    "submit-done": "envlock submit -- true, submit -> record final",
    "sbatch-done": "sbatch --wrap 'docker run --rm IMAGE true', submit -> COMPLETED",
    "submit": "envlock submit --slurm -- true (the command)",
    "sbatch": "sbatch --parsable --wrap ... (the command)",
    "mlflow": "envlock run --mlflow URL -- true",
    "run": "envlock run -- true",
    "docker": "docker run --rm IMAGE true",
}
ROWS = (  # table row: measurement, envlock's key, the alternative's key
    ("Slurm submit -> finished: envlock submit / sbatch --wrap docker run", "submit-done", "sbatch-done"),
    ("Slurm submit command alone: envlock submit / sbatch", "submit", "sbatch"),
    ("MLflow: envlock run --mlflow URL / envlock run (no MLflow)", "mlflow", "run"),
    ("envlock run (no MLflow) / docker run --rm IMAGE true", "run", "docker"),
)
ENVLOCK_RUNS = ("submit-done", "mlflow", "run")  # the keys that make a run record


def job_state(job_id: str) -> str:
    """The job's JobState from `scontrol show job` ("" when Slurm could not be asked)."""
    done = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=False)
    found = re.search(r"\bJobState=(\S+)", done.stdout) if done.returncode == 0 else None
    return found.group(1) if found else ""


def wait_job(job_id: str, what: str) -> str:
    """Ask `scontrol show job` every POLL s until the job has ended; its final state."""
    state = ""

    def ended() -> bool:
        nonlocal state
        state = job_state(job_id)
        return state in FINAL_STATES

    poll(what, ended)
    return state


def record_of(path: Path) -> dict[str, object] | None:
    """A run record, None while it cannot be read (written atomically, so only before it exists)."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def poll(what: str, answer: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Call `answer` every POLL s until it returns something true; Failed after the timeout."""
    deadline = time.perf_counter() + timeout
    while not answer():
        if time.perf_counter() > deadline:
            raise Failed("timeout", f"{what}: not within {timeout:.0f} s")
        time.sleep(POLL)


class Bench:
    """The throw-away project, its private envlock cache, the image, the MLflow server, what the rounds measured."""

    def __init__(self, root: Path) -> None:
        self.root, self.project, self.cache = root, root / "project", root / "cache"
        clean = {name: value for name, value in os.environ.items() if not name.startswith("MLFLOW_")}
        self.env = clean | {"ENVLOCK_CACHE_DIR": str(self.cache)}
        self.reference, self.image_id, self.url = "", "", ""
        self.server: subprocess.Popen[bytes] | None = None
        self.samples: dict[str, list[float]] = {}
        self.failed: dict[str, str] = {}
        self.notes: list[str] = []
        self.started: Counter[str] = Counter()  # measurement key -> how many times it was started
        self.slurm_idle = 0.0  # perf_counter() when the last Slurm measurement ended
        self.jobs: set[str] = set()  # Slurm jobs submitted here and not yet seen ended
        self.states: Counter[str] = Counter()  # how the jobs ended: 'envlock STATE', 'sbatch STATE'

    def envlock(self, *args: str) -> str:
        return timed([str(BIN / "envlock"), *args], self.env)[1]

    def setup(self) -> None:
        """Lock and build the project (untimed); remember the image's reference and ID; start the MLflow server."""
        self.project.mkdir()
        (self.project / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
        seed_cache(self.cache)
        self.envlock("lock", "-C", str(self.project))
        self.reference, self.image_id = built_image(self.envlock("build", "-C", str(self.project)))
        try:
            self.start_server()
        except Failed as exc:
            self.failed["mlflow"] = exc.label
            self.notes.append(f"mlflow server: {exc}")

    def start_server(self) -> None:
        """`mlflow server` on a free loopback port, in a session of its own (its workers go with it)."""
        port, store = free_port(), self.root / "mlflow"
        store.mkdir()
        command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--backend-store-uri", f"sqlite:///{store}/mlflow.db", "--artifacts-destination"]
        command += [str(store / "artifacts"), "--workers", "1"]
        with (store / "server.log").open("wb") as log:
            self.server = subprocess.Popen(
                command,
                cwd=store,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{port}"
        started = time.perf_counter()

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:  # noqa: S310 (loopback)
                    return bool(answer.status == 200)
            except OSError:
                if self.server is not None and self.server.poll() is not None:
                    tail = (store / "server.log").read_text(errors="replace").strip().splitlines()[-1:]
                    raise Failed("FAIL", f"exited {self.server.returncode}: {' '.join(tail)}") from None
                return False

        poll("GET /health", healthy, HEALTH_WAIT)
        self.notes.append(f"mlflow server at {self.url}: healthy {time.perf_counter() - started:.1f} s after start")

    def measure(self, repeat: int) -> None:
        """Every measurement once per round (interleaved, so drift hits all alike); a failed one is not retried."""
        envlock, project = str(BIN / "envlock"), str(self.project)
        simple = {
            "mlflow": [envlock, "run", "-C", project, "--mlflow", self.url, "--", "true"],
            "run": [envlock, "run", "-C", project, "--", "true"],
            "docker": ["docker", "run", "--rm", self.image_id, "true"],
        }
        jobs = {"submit-done": self.submit_envlock, "sbatch-done": self.submit_sbatch}
        for i in range(repeat):
            print(f"  round {i + 1}/{repeat}", file=sys.stderr)
            for key in list(jobs)[:: 1 if i % 2 == 0 else -1]:  # which goes first alternates
                if key not in self.failed:
                    self.settle()
                    self.once(key, jobs[key])
                    self.slurm_idle = time.perf_counter()
            for key, command in simple.items():
                if key not in self.failed:
                    self.once(key, self.simple, key, command)

    def settle(self) -> None:
        """Slurm left idle SETTLE s before each submission, alike for both: slurmctld starts pending jobs on a
        cadence of its own (in about 1 s steps), so the time since the last job ended sways the latency."""
        time.sleep(max(0.0, self.slurm_idle + SETTLE - time.perf_counter()))

    def once(self, key: str, measure: Callable[..., None], *args: object) -> None:
        self.started[key] += 1
        try:
            measure(*args)
        except Failed as exc:
            self.failed[key] = exc.label
            self.notes.append(f"{LABELS[key]}: {exc}")

    def add(self, key: str, seconds: float) -> None:
        self.samples.setdefault(key, []).append(seconds)

    def simple(self, key: str, command: list[str]) -> None:
        self.add(key, timed(command, self.env)[0])

    def submit_envlock(self) -> None:
        """`envlock submit --slurm -- true` until its record is final; then, untimed, until Slurm ends the job."""
        command = [str(BIN / "envlock"), "submit", "-C", str(self.project), "--slurm", "--", "true"]
        start = time.perf_counter()
        try:
            wall, output = timed(command, self.env)
        except Failed as exc:
            self.failed["submit"] = exc.label
            raise
        found = QUEUED.search(output)
        if not found:
            self.failed["submit"] = "FAIL"
            raise Failed("FAIL", f"envlock submit did not say which run and job it queued: {output.strip()[-200:]}")
        run_id, job_id = found.groups()
        self.jobs.add(job_id)
        self.add("submit", wall)
        path = self.project / ".envlock" / "runs" / run_id / "record.json"
        record: dict[str, object] = {}

        def final() -> bool:
            record.update(record_of(path) or {})
            return record.get("status") in RECORD_FINAL

        poll(f"run {run_id} (Slurm job {job_id}) record", final)
        latency, final_at = time.perf_counter() - start, time.perf_counter()
        if record["status"] != "finished":
            log = (path.parent / "log.txt").read_text(errors="replace") if (path.parent / "log.txt").exists() else ""
            tail = " / ".join(log.strip().splitlines()[-2:])
            raise Failed("FAIL", f"run {run_id} {record['status']} (exit {record.get('exit_code')}): {tail}")
        self.add("submit-done", latency)
        state = wait_job(job_id, f"Slurm job {job_id} of run {run_id} to end")
        self.jobs.discard(job_id)
        self.states[f"envlock {state}"] += 1
        self.add("submit-ended", time.perf_counter() - final_at)

    def submit_sbatch(self) -> None:
        """`sbatch --wrap "docker run --rm IMAGE true"` until `scontrol show job` says COMPLETED."""
        output = str(self.root / "slurm-%j.out")
        command = ["sbatch", "--parsable", "--output", output, "--wrap", f"docker run --rm {self.image_id} true"]
        start = time.perf_counter()
        try:
            wall, said = timed(command, self.env)
        except Failed as exc:
            self.failed["sbatch"] = exc.label
            raise
        job_id = said.strip().split(";")[0]
        if not job_id.isdigit():
            self.failed["sbatch"] = "FAIL"
            raise Failed("FAIL", f"sbatch answered {said.strip()!r} where a job id was expected")
        self.jobs.add(job_id)
        self.add("sbatch", wall)
        state = wait_job(job_id, f"Slurm job {job_id}")
        latency = time.perf_counter() - start
        self.jobs.discard(job_id)
        self.states[f"sbatch {state}"] += 1
        if state != "COMPLETED":
            raise Failed("FAIL", f"Slurm job {job_id} ended {state}")
        self.add("sbatch-done", latency)

    def cell(self, key: str) -> Cell:
        values = self.samples.get(key)
        return (min(values), statistics.median(values)) if values else self.failed.get(key, "n/a")

    def count_records(self) -> None:
        root = self.project / ".envlock" / "runs"
        statuses: Counter[str] = Counter()
        tracked = 0
        for directory in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
            record = record_of(directory / "record.json")
            if record is None or "status" not in record:
                statuses["unreadable"] += 1
                continue
            kind = "submitted" if record.get("scheduler") else "run"
            statuses[f"{kind} {record['status']} exit {record.get('exit_code')}"] += 1
            tracked += bool(record.get("tracking"))
        made = sum(statuses.values())
        shown = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items())) or "none"
        started = sum(self.started[key] for key in ENVLOCK_RUNS)
        verdict = "one each" if made == started else "MISMATCH"
        self.notes.append(
            f"run records: {made} written for {started} `envlock submit`s and `envlock run`s ({verdict}): "
            f"{shown}; {tracked} with MLflow tracking; removed with the project"
        )

    def count_tracked(self) -> None:
        """How many runs the MLflow server holds in the project's experiment, by status."""
        if not self.url or self.server is None or self.server.poll() is not None:
            return
        try:
            query = urllib.parse.urlencode({"experiment_name": NAME})
            with urllib.request.urlopen(f"{self.url}/api/2.0/mlflow/experiments/get-by-name?{query}") as answer:  # noqa: S310
                experiment = json.load(answer)["experiment"]["experiment_id"]
            body = json.dumps({"experiment_ids": [experiment], "max_results": 1000}).encode()
            request = urllib.request.Request(  # noqa: S310 (loopback)
                f"{self.url}/api/2.0/mlflow/runs/search", body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request) as answer:  # noqa: S310
                runs = json.load(answer).get("runs", [])
        except (OSError, ValueError, KeyError) as exc:
            self.notes.append(f"MLflow runs: could not ask the server: {exc}")
            return
        statuses = Counter(str(run["info"].get("status")) for run in runs)
        shown = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items())) or "none"
        asked = self.started["mlflow"]
        self.notes.append(f"MLflow runs in experiment {NAME}: {len(runs)} ({shown}) for {asked} `envlock run --mlflow`")

    def cleanup(self) -> None:
        """Slurm jobs not seen ending, the server, containers from the image (none expected), then the image."""
        if self.jobs:
            subprocess.run(["scancel", *sorted(self.jobs)], capture_output=True, check=False)
            self.notes.append(f"Slurm job(s) {', '.join(sorted(self.jobs))} had not ended: cancelled")
        if self.server is not None:
            try:
                os.killpg(self.server.pid, signal.SIGTERM)
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait()
            except ProcessLookupError:
                self.server.wait()
        if not self.image_id:
            return
        if self.jobs:  # a cancelled job's container may still be going away
            time.sleep(2)
        if leftovers := docker("ps", "-a", "-q", "--filter", f"ancestor={self.image_id}").split():
            docker("rm", "-f", *leftovers)
            self.notes.append(f"{len(leftovers)} container(s) of the image were left behind: removed")
        docker("image", "rm", self.reference)
        if docker("image", "inspect", "-f", "{{.Id}}", self.image_id):
            self.notes.append(f"image {self.image_id[:19]} still in the engine under another name: kept")


def ratio(top: Cell, bottom: Cell) -> str:
    """The ratio of the medians, for the table."""
    both = ratios(top, bottom)
    return "n/a" if both is None else f"{both[1]:.2f}x"


def report(bench: Bench, repeat: int) -> None:
    version = subprocess.run([str(BIN / "envlock"), "--version"], capture_output=True, text=True, check=False)
    engine = docker("version", "-f", "{{.Server.Version}}")
    slurm = subprocess.run(["sbatch", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    mlflow = subprocess.run([str(BIN / "mlflow"), "--version"], capture_output=True, text=True, check=False)
    print(f"{version.stdout.strip()} | Docker engine {engine} | {slurm} | {mlflow.stdout.strip()}")
    print(f"{NAME} ({DEPENDENCY}, {PLATFORM}): {bench.reference} {bench.image_id[:19]}")
    print(f"best and median of {repeat} run(s) per cell, seconds, the measurements interleaved round by round")
    rows: list[tuple[str, ...]] = [
        ("measurement: envlock / alternative", "envlock best", "median", "alternative best", "median", "ratio")
    ]
    for label, mine, theirs in ROWS:
        cells = []
        for key in (mine, theirs):
            cell = bench.cell(key)
            cells += [f"{v:.3f}" for v in cell] if isinstance(cell, tuple) else [cell, cell]
        rows.append((label, *cells, ratio(bench.cell(mine), bench.cell(theirs))))
    print_table(rows)
    print("(ratio: of the medians)")
    print_notes(differences(bench) + bench.notes)


def differences(bench: Bench) -> list[str]:
    """The absolute costs behind the ratios, and how the jobs ended."""
    notes = []
    for label, mine, theirs in ROWS:
        top, bottom = bench.cell(mine), bench.cell(theirs)
        if isinstance(top, tuple) and isinstance(bottom, tuple):
            notes.append(f"{label}: medians differ by {top[1] - bottom[1]:+.3f} s")
    if "submit-ended" in bench.samples:
        notes.append(
            f"envlock's job, record final -> Slurm says it ended (untimed above; sbatch's latency includes its own): "
            f"{best_median(bench.samples['submit-ended'])}"
        )
    if bench.states:
        shown = ", ".join(f"{n} {state}" for state, n in sorted(bench.states.items()))
        notes.append(f"Slurm jobs ended: {shown}")
    notes.append(
        f"Slurm latencies: polled every {POLL} s (record.json, scontrol show job); each submission after Slurm was "
        f"left idle {SETTLE:.0f} s, envlock and sbatch taking turns to go first"
    )
    return notes


def main(argv: list[str] | None = None) -> int:
    parser, args = docker_bench_args(__doc__, 5, "rounds; each cell shows the best and the median", argv)
    if not (BIN / "mlflow").exists():
        parser.error(f"mlflow not found in {BIN}: install the dev extra (pip install -e '.[dev]')")
    pinged = shutil.which("scontrol") and subprocess.run(["scontrol", "ping"], capture_output=True, check=False)
    if not pinged or pinged.returncode != 0 or shutil.which("sbatch") is None:
        parser.error("Slurm is not reachable (`scontrol ping`); start the local cluster: bash scripts/services.sh")
    steps: list[tuple[str, Callable[[Bench], None]]] = [
        ("setup", Bench.setup),
        ("the rounds", lambda bench: bench.measure(args.repeat)),
        ("counting records", Bench.count_records),
        ("counting MLflow runs", Bench.count_tracked),
    ]
    return run_bench("envlock-bench-submit-", Bench, steps, lambda bench: report(bench, args.repeat))


if __name__ == "__main__":
    sys.exit(main())
