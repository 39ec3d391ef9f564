"""Benchmark lineage on a project with many runs: `envlock lineage` and `envlock runs` over generated run records.

Run from the repository root (stdlib only; no engine needed):

    PYTHONPATH=src .venv/bin/python benchmarks/lineage.py [--runs 1000] [--repeat 3]

A temp project gets --runs records (version 5, as envlock writes them): chains of three steps (prepare reads a raw
file and writes data/clean-N.csv; train reads it and writes out/model-N.pkl; evaluate reads both and writes
out/metrics-N.json), each step linked to its parents by hash, plus one long chain where every run reads the
previous run's output (the worst case: a lineage through every record). Timed, each as a whole `envlock` process
(start-up included), best and median of --repeat: `envlock lineage` of the last evaluate's metrics file (a file:
found by its hash among every run's outputs), `envlock lineage` of the long chain's last run, `envlock runs`
(the table) and `envlock runs --json`; and, in-process, what a run's start adds (every record read, its inputs' links
found). Target: each under 2 s. The temp dir is removed. Exit status 1 when a command failed or a target is
missed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import Failed, print_notes, print_table, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from envlock.run.hostprobe import HostState
from envlock.run.inputs import InputSet
from envlock.run.links import find_links
from envlock.run.records import RunRecord, RunStore
from envlock.run.schema import GitRecord, Link, RuntimeRecord

TARGET_S = 2.0
START = datetime(2026, 12, 1, tzinfo=UTC)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _record(index: int, command: str, reads: dict[str, str], writes: dict[str, str], links: list[Link]) -> RunRecord:
    """One finished run's record; `index` makes its id and start time unique and ordered."""
    started = START + timedelta(seconds=index)
    return RunRecord(
        run_id=started.strftime("%Y%m%dT%H%M%SZ") + f"-{index:06x}",
        status="finished",
        command=["python", command],
        image_id="sha256:" + _sha("image"),
        image_reference="bench:0123456789ab",
        repo_digests=[],
        lock_hash=_sha("lock"),
        platform="linux/amd64",
        git=GitRecord(commit="c0ffee" + f"{index:034x}", dirty=False),
        host=HostState(None, None, (), "bench CPU", "6.1.0", "27.3.1"),
        seed=0,
        environment={"PYTHONHASHSEED": "0"},
        passed_env=[],
        forced=False,
        preflight=[],
        started=started.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        container=f"envlock-run-{index}",
        envlock_pid=1,
        ended=started.isoformat().replace("+00:00", "Z"),
        exit_code=0,
        outputs=dict(writes),
        inputs=InputSet(tuple(reads), dict(reads)),
        declared_outputs=list(writes),
        gpus=False,
        log_sha256=_sha(f"log {index}"),
        runtime=RuntimeRecord("docker", "27.3.1"),
        links=tuple(links),
    )


def generate(project: Path, runs: int) -> tuple[str, str]:
    """Write the records; returns (the last metrics file's name, the long chain's last run id)."""
    store = RunStore(project)
    made: dict[str, tuple[str, str]] = {}  # sha256 → (run id, path)
    index = 0

    def add(command: str, reads: dict[str, str], writes: dict[str, str]) -> RunRecord:
        nonlocal index
        links = [Link(path, digest, *made[digest]) for path, digest in sorted(reads.items()) if digest in made]
        record = _record(index, command, reads, writes, links)
        index += 1
        store.save(record)
        made.update({digest: (record.run_id, path) for path, digest in writes.items()})
        return record

    long_runs = runs // 4
    previous = {"data/seed.bin": _sha("seed")}
    last = None
    for step in range(long_runs):
        out = {f"work/step-{step}.bin": _sha(f"long {step}")}
        last = add("step.py", previous, out)
        previous = out
    metrics = ""
    chain = 0
    while index + 3 <= runs:
        clean, model = _sha(f"clean {chain}"), _sha(f"model {chain}")
        metrics = f"out/metrics-{chain}.json"
        add("prepare.py", {"data/raw.csv": _sha(f"raw {chain % 7}")}, {f"data/clean-{chain}.csv": clean})
        add("train.py", {f"data/clean-{chain}.csv": clean}, {f"out/model-{chain}.pkl": model})
        add("evaluate.py", {f"data/clean-{chain}.csv": clean, f"out/model-{chain}.pkl": model},
            {metrics: _sha(metrics)})  # fmt: skip
        chain += 1
    (project / metrics).parent.mkdir(parents=True, exist_ok=True)
    (project / metrics).write_text(metrics)  # its bytes hash to what the record says evaluate wrote
    assert last is not None
    return metrics, last.run_id


def main() -> int:
    """Generate, time, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    envlock = [sys.executable, "-m", "envlock"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    rows: list[tuple[str, ...]] = [("command", "best", "median", f"target {TARGET_S:g} s")]
    failed = False
    with tempfile.TemporaryDirectory(prefix="envlock-bench-lineage-") as tmp:
        project = Path(tmp)
        began = time.perf_counter()
        metrics, long_last = generate(project, args.runs)
        generated = time.perf_counter() - began
        commands = {
            f"lineage {metrics} (3 steps, found by hash)": [*envlock, "lineage", metrics, "-C", tmp],
            f"lineage of the long chain ({args.runs // 4} steps)": [*envlock, "lineage", long_last, "-C", tmp],
            f"runs ({args.runs} records)": [*envlock, "runs", "-C", tmp],
            "runs --json": [*envlock, "runs", "-C", tmp, "--json"],
        }
        for name, command in commands.items():
            try:
                times = [timed(command, env=env)[0] for _ in range(args.repeat)]
            except Failed as exc:
                rows.append((name, exc.label, str(exc)[-80:], ""))
                failed = True
                continue
            best, median = min(times), statistics.median(times)
            ok = median <= TARGET_S
            failed |= not ok
            rows.append((name, f"{best:.2f} s", f"{median:.2f} s", "ok" if ok else f"over {TARGET_S:g} s"))
        # What a run's start adds: every record read, the links found (in-process, no start-up).
        store = RunStore(project)
        probe = InputSet(("data/clean-0.csv",), {"data/clean-0.csv": _sha("clean 0")})
        starts = []
        for _ in range(args.repeat):
            began = time.perf_counter()
            assert find_links(probe, store.all())
            starts.append(time.perf_counter() - began)
        median = statistics.median(starts)
        failed |= median > TARGET_S
        verdict = "ok" if median <= TARGET_S else f"over {TARGET_S:g} s"
        rows.append(("links found at a run's start (in-process)", f"{min(starts):.2f} s", f"{median:.2f} s", verdict))
    print_table(rows)
    print_notes([f"{args.runs} records generated in {generated:.2f} s; each time is a whole envlock process"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
