"""envlock submit --slurm against real Slurm (slurmctld + slurmd + munge on this machine, started by
scripts/services.sh) and the real Docker engine: the example runs as a batch job in its pinned image."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.integration.example import digits_repo

pytestmark = [pytest.mark.docker, pytest.mark.network, pytest.mark.slurm]
ENVLOCK = str(Path(sys.executable).with_name("envlock"))
TRAIN = ["python", "train.py", "--out", "out"]


def envlock(*args: str, project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVLOCK, *args[:1], "-C", str(project), *args[1:]], capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A git copy of the CPU example, locked and built once, with one local run to compare the jobs with."""
    if shutil.which("sbatch") is None or subprocess.run(["scontrol", "ping"], check=False).returncode != 0:
        pytest.fail("Slurm is not running: bash scripts/services.sh starts the local one-node cluster")
    project = digits_repo(tmp_path_factory.mktemp("digits-slurm"))
    done = envlock("run", "--output", "out", "--", *TRAIN, project=project)
    assert done.returncode == 0, done.stderr
    yield project
    client = docker.from_env()
    for image in client.images.list(name="digits"):
        client.images.remove(image.id, force=True)


def runs(project: Path) -> dict[str, dict[str, Any]]:
    done = envlock("runs", "--json", project=project)
    assert done.returncode == 0, done.stderr
    return {r["run_id"]: r for r in json.loads(done.stdout)}


def wait_for(project: Path, run_id: str, statuses: set[str], seconds: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        record = runs(project)[run_id]
        if record["status"] in statuses:
            return record
        time.sleep(1)
    raise AssertionError(f"run {run_id} still {record['status']} after {seconds} s: {record}")


def submitted(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[1].rstrip(":")


def test_a_two_node_job_is_refused_before_anything_is_queued(digits: Path) -> None:
    before = set(runs(digits))
    done = envlock("submit", "--slurm", "-N", "2", "--", *TRAIN, project=digits)
    assert done.returncode == 17 and "one container on one node" in done.stderr
    assert set(runs(digits)) == before


def test_a_job_runs_the_example_in_the_same_image_and_reproduces(digits: Path) -> None:
    (local,) = runs(digits).values()
    run_id = submitted(
        envlock("submit", "--output", "out", "--slurm", "--time=10", "-J", "digits", "--", *TRAIN, project=digits)
    )
    record = wait_for(digits, run_id, {"finished", "failed", "interrupted"})
    assert record["status"] == "finished", (digits / ".envlock" / "runs" / run_id / "log.txt").read_text()
    job = record["scheduler"]
    assert job["job-id"].isdigit() and job["options"] == ["--time=10", "-J", "digits"] and job["node"]
    assert record["image_id"] == local["image_id"] and record["lock_hash"] == local["lock_hash"]
    assert record["outputs"] == local["outputs"], "the job's outputs are the local run's, byte for byte"
    assert record["host"]["docker-version"] and record["git"]["commit"] == local["git"]["commit"]
    slurm_out = (digits / ".envlock" / "runs" / run_id / f"slurm-{job['job-id']}.out").read_text()
    assert '"accuracy"' in slurm_out and f"run {run_id}: finished" in slurm_out
    shown = envlock("runs", "show", run_id, project=digits)
    assert f"job       slurm {job['job-id']}" in shown.stdout and "sbatch    --time=10 -J digits" in shown.stdout
    again = envlock("reproduce", run_id, project=digits)
    assert again.returncode == 0, again.stderr
    assert "REPRODUCED: run " in again.stdout and "changed: nothing" in again.stdout


@pytest.fixture
def cancel_at_end() -> Iterator[list[str]]:
    """Job ids to cancel when the test ends, passed or not: no test leaves a job in the queue."""
    jobs: list[str] = []
    yield jobs
    if jobs:
        subprocess.run(["scancel", *jobs], check=False)


def job_of(project: Path, run_id: str) -> str:
    return str(runs(project)[run_id]["scheduler"]["job-id"])


def test_runs_follows_a_job_from_queued_to_cancelled(digits: Path, cancel_at_end: list[str]) -> None:
    run_id = submitted(envlock("submit", "--slurm", "--begin=now+1hour", "--", "true", project=digits))
    cancel_at_end.append(job_of(digits, run_id))
    deadline = time.monotonic() + 30
    while True:  # Slurm names the reason at its next scheduling pass
        listing = envlock("runs", project=digits).stdout
        line = next(line for line in listing.splitlines() if line.startswith(run_id))
        if "(BeginTime)" in line or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert " queued " in line and "(BeginTime)" in line, listing
    subprocess.run(["scancel", job_of(digits, run_id)], check=True)
    record = wait_for(digits, run_id, {"interrupted", "failed", "finished"}, seconds=60)
    assert record["status"] == "interrupted" and "CANCELLED" in record["error"]
    assert record["host"] == {} and record["exit_code"] is None, "it never ran: no host, no exit code"


def test_a_running_job_cancelled_stops_its_container_and_says_interrupted(
    digits: Path, cancel_at_end: list[str]
) -> None:
    sleeper = ["python", "-c", "import time; print('started', flush=True); time.sleep(600)"]
    run_id = submitted(envlock("submit", "--slurm", "--", *sleeper, project=digits))
    cancel_at_end.append(job_of(digits, run_id))
    wait_for(digits, run_id, {"running"})
    record = runs(digits)[run_id]
    line = next(line for line in envlock("runs", project=digits).stdout.splitlines() if line.startswith(run_id))
    assert " running " in line and f"slurm {record['scheduler']['job-id']}" in line
    client = docker.from_env()
    deadline = time.monotonic() + 60
    while not client.containers.list(filters={"name": record["container"]}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert client.containers.list(filters={"name": record["container"]}), "the job's container runs"
    subprocess.run(["scancel", record["scheduler"]["job-id"]], check=True)
    record = wait_for(digits, run_id, {"interrupted", "failed", "finished"}, seconds=90)
    assert (record["status"], record["exit_code"]) == ("interrupted", 130)
    assert not client.containers.list(all=True, filters={"name": record["container"]}), "container removed"
