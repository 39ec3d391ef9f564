"""Lineage in the real engine: three runs linked by content, the DAG told, the chain re-run and reported."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.integration.example import git

pytestmark = [pytest.mark.docker, pytest.mark.network]
ENVLOCK = str(Path(sys.executable).with_name("envlock"))
NAME = "envlock-it-lineage"

# Stdlib-only steps; the lock holds one small wheel (envlock refuses a lock with nothing in it).
PYPROJECT = f'[project]\nname = "{NAME}"\nversion = "0.1.0"\ndependencies = ["six==1.16.0"]\n'
RAW = "x,y\n1,2\n3,5\n,7\n4,9\n"
PREPARE = """import csv

with open("data/raw.csv", newline="") as handle:
    rows = [row for row in csv.DictReader(handle) if row["x"] and row["y"]]
with open("data/clean.csv", "w", newline="") as handle:
    writer = csv.DictWriter(handle, ["x", "y"])
    writer.writeheader()
    writer.writerows(rows)
print("prepared", len(rows), "rows")
"""
TRAIN = """import csv, pathlib, pickle

with open("data/clean.csv", newline="") as handle:
    rows = [(float(row["x"]), float(row["y"])) for row in csv.DictReader(handle)]
mx, my = sum(x for x, _ in rows) / len(rows), sum(y for _, y in rows) / len(rows)
a = sum((x - mx) * (y - my) for x, y in rows) / sum((x - mx) ** 2 for x, _ in rows)
pathlib.Path("out").mkdir(exist_ok=True)
pathlib.Path("out/model.pkl").write_bytes(pickle.dumps({"a": a, "b": my - a * mx}, protocol=4))
print("trained a =", round(a, 6))
"""
EVALUATE = """import csv, json, pathlib, pickle

model = pickle.loads(pathlib.Path("out/model.pkl").read_bytes())
with open("data/clean.csv", newline="") as handle:
    rows = [(float(row["x"]), float(row["y"])) for row in csv.DictReader(handle)]
mse = sum((model["a"] * x + model["b"] - y) ** 2 for x, y in rows) / len(rows)
pathlib.Path("out/metrics.json").write_text(json.dumps({"mse": round(mse, 9), "rows": len(rows)}, sort_keys=True))
print("mse", round(mse, 9))
"""
STEPS = (
    ("prepare.py", ("-i", "data/raw.csv", "-o", "data/clean.csv")),
    ("train.py", ("-i", "data/clean.csv", "-o", "out/model.pkl")),
    ("evaluate.py", ("-i", "data/clean.csv", "-i", "out/model.pkl", "-o", "out/metrics.json")),
)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """The three-step project in a git repository of its own, locked, the lock committed; its images removed
    afterwards."""
    project = tmp_path / "lineage"
    files = {
        "pyproject.toml": PYPROJECT,
        "data/raw.csv": RAW,
        "prepare.py": PREPARE,
        "train.py": TRAIN,
        "evaluate.py": EVALUATE,
        ".gitignore": "out/\n.envlock/\ndata/clean.csv\n",
    }
    for name, text in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    git(project, "init", "-q")
    done = envlock(project, "lock")
    assert done.returncode == 0, done.stderr
    git(project, "add", ".")
    git(project, "commit", "-qm", "three steps")
    yield project
    client = docker.from_env()
    for image in client.images.list(name=NAME):
        client.images.remove(image.id, force=True)


def envlock(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ENVLOCK, *args], capture_output=True, text=True, check=False, cwd=project)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_three_runs_tell_their_dag_reproduce_as_a_chain_and_name_the_first_difference(
    project: Path, tmp_path: Path
) -> None:
    timings: dict[str, float] = {}
    started = time.monotonic()
    ids = []
    for script, files in STEPS:
        done = envlock(project, "run", *files, "--", "python", script)
        assert done.returncode == 0, done.stdout + done.stderr
        ids.append(done.stderr.split("run ")[-1].split(":")[0])
    timings["3 runs"] = round(time.monotonic() - started, 1)
    assert (project / "out/metrics.json").read_text() == '{"mse": 0.595238095, "rows": 3}'

    started = time.monotonic()
    done = envlock(project, "lineage", "out/metrics.json")
    timings["lineage"] = round(time.monotonic() - started, 1)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    metrics, clean, model = (sha256(project / p) for p in ("out/metrics.json", "data/clean.csv", "out/model.pkl"))
    raw = sha256(project / "data/raw.csv")
    assert lines[0] == f"lineage of out/metrics.json (sha256 {metrics[:12]}): 3 steps, 1 raw input"
    assert lines[1] == f"raw input data/raw.csv  sha256 {raw}"
    assert [line for line in lines if line.startswith("step ")] == [
        f"step {n}  run {run}  finished, exit 0" for n, run in enumerate(ids, 1)
    ]
    assert f"  read     data/raw.csv  sha256 {raw}  raw" in lines
    assert lines.count(f"  read     data/clean.csv  sha256 {clean}  from step 1 (data/clean.csv)") == 2
    assert f"  read     out/model.pkl  sha256 {model}  from step 2 (out/model.pkl)" in lines
    assert f"  wrote    out/metrics.json  sha256 {metrics}" in lines
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True)
    assert lines.count(f"  commit   {head.stdout.strip()}") == 3, "each step ran the committed code"
    told = json.loads(envlock(project, "lineage", "out/metrics.json", "--json").stdout)
    assert [step["run_id"] for step in told["steps"]] == ids

    started = time.monotonic()
    done = envlock(project, "reproduce", "--chain", "out/metrics.json")
    timings["reproduce --chain"] = round(time.monotonic() - started, 1)
    assert done.returncode == 0, done.stdout + done.stderr
    verdicts = [line for line in done.stdout.splitlines() if line.startswith(("step ", "chain "))]
    assert [line.split(": run ")[0] for line in verdicts[:3]] == [f"step {n} REPRODUCED" for n in (1, 2, 3)]
    assert [line.split(" re-ran ")[1] for line in verdicts[:3]] == [
        f"{run} (python {script})" for run, (script, _) in zip(ids, STEPS, strict=True)
    ]
    assert verdicts[3].startswith("chain chain-") and verdicts[3].endswith(": REPRODUCED (3 steps)")
    assert len(verdicts) == 4
    held = verdicts[3].split()[1].rstrip(":")

    (project / "data/raw.csv").write_text(RAW.replace("4,9", "4,10"))
    started = time.monotonic()
    done = envlock(project, "reproduce", "--chain", "out/metrics.json")
    timings["reproduce --chain (raw edited)"] = round(time.monotonic() - started, 1)
    assert done.returncode == 16, done.stdout + done.stderr
    assert done.stdout.startswith("prepared 3 rows\n"), "only step 1 ran"
    lines = done.stdout.splitlines()
    assert lines[1] == f"step 1 NOT REPRODUCED: run {lines[1].split()[5]} re-ran {ids[0]} (python prepare.py)"
    assert "    output data/clean.csv: differs" in lines and "    changed: input data/raw.csv: changed" in lines
    assert f"step 2 NOT RUN: run {ids[1]} was not re-run (python train.py)" in lines
    assert f"step 3 NOT RUN: run {ids[2]} was not re-run (python evaluate.py)" in lines
    assert lines[-1].endswith(
        f": NOT REPRODUCED: first divergent step 1 (run {ids[0]}): "
        "data/clean.csv differs (row 3 col 1: 9 -> 10 (by +1))"
    ), lines[-1]
    moved = lines[-1].split()[1].rstrip(":")

    page = tmp_path / "chain.html"
    started = time.monotonic()
    done = envlock(project, "report", "--chain", "out/metrics.json", "--html", "-o", str(page))
    timings["report --chain --html"] = round(time.monotonic() - started, 1)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr
    html = page.read_text()
    assert '<svg id="chain-graph"' in html and "default-src 'none'" in html and "<script" not in html
    assert [f"Step {n}: python {script} — UNSIGNED" in html for n, (script, _) in enumerate(STEPS, 1)] == [True] * 3
    assert f"last chain re-run {moved}: NOT REPRODUCED" in html
    cell = '<tr><td class="k">{}</td><td class="v">{}</td></tr>'
    assert cell.format(held, "REPRODUCED") in html and cell.format(moved, "NOT REPRODUCED") in html
    assert html.count(cell.format("last chain re-run", f"{moved}: NOT RUN")) == 2, "steps 2 and 3: not re-run"
    print("\nlineage: " + ", ".join(f"{k} {v}s" for k, v in timings.items()))
