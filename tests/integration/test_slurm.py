"""envlock submit --slurm against real Slurm (slurmctld + slurmd + munge on this machine, started by
scripts/services.sh) and the real Docker engine: the example runs as a batch job in its pinned image."""

from __future__ import annotations

import hashlib
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
    if (
        shutil.which("sbatch") is None
        or subprocess.run(["scontrol", "ping"], capture_output=True, check=False).returncode != 0
    ):
        pytest.fail("Slurm is not running: bash scripts/services.sh starts the local two-node cluster")
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


RENDEZVOUS = """
import os, socket, sys, time
rank, nodes = int(os.environ["ENVLOCK_NODE_RANK"]), os.environ["ENVLOCK_NNODES"]
address = (os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
if rank == 0:
    with socket.create_server(("0.0.0.0", address[1])) as server:
        server.settimeout(120)
        connection, _ = server.accept()
        said = connection.recv(200).decode()
    os.makedirs("met", exist_ok=True)
    open("met/rendezvous.txt", "w").write(said)
    print("rank 0 heard:", said)
else:
    for _ in range(240):
        try:
            connection = socket.create_connection(address, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    connection.sendall(f"rank {rank} of {nodes}".encode())
    print("rank", rank, "spoke")
"""


def test_a_two_node_job_runs_a_container_per_node_that_meet_at_rank_0(digits: Path, cancel_at_end: list[str]) -> None:
    (digits / "rendezvous.py").write_text(RENDEZVOUS)
    done = envlock(
        "submit",
        "--output",
        "out/rendezvous.txt",
        "--slurm",
        "-N",
        "2",
        "--",
        "python",
        "rendezvous.py",
        project=digits,
    )
    run_id = submitted(done)
    cancel_at_end.append(job_of(digits, run_id))
    record = wait_for(digits, run_id, {"finished", "failed", "interrupted"})
    assert record["status"] == "finished", (digits / ".envlock" / "runs" / run_id / "log.txt").read_text()
    assert (digits / "met" / "rendezvous.txt").read_text() == "rank 1 of 2", "rank 1 reached rank 0 by MASTER_ADDR"
    node = json.loads((digits / ".envlock" / "runs" / run_id / "nodes" / "1" / "record.json").read_text())
    assert node["status"] == "finished" and node["scheduler"]["rank"] == 1
    assert {record["scheduler"]["node"], node["scheduler"]["node"]} == set(
        subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, check=True).stdout.split()
    ), "one task on each of the two nodes"
    assert node["image_id"] == record["image_id"] and node["container"] != record["container"]
    assert record["environment"]["ENVLOCK_NNODES"] == "2" and node["environment"]["ENVLOCK_NODE_RANK"] == "1"
    shown = envlock("runs", "show", run_id, project=digits).stdout
    assert f"node 1    {node['scheduler']['node']}: finished, exit 0" in shown
    again = envlock("reproduce", run_id, project=digits)
    assert again.returncode == 2 and "ran on 2 nodes" in again.stderr and "-N 2" in again.stderr


def test_a_failing_node_stops_the_others(digits: Path, cancel_at_end: list[str]) -> None:
    fail_on_1 = "import os, sys, time; sys.exit(3) if os.environ['ENVLOCK_NODE_RANK'] == '1' else time.sleep(300)"
    run_id = submitted(envlock("submit", "--slurm", "-N", "2", "--", "python", "-c", fail_on_1, project=digits))
    cancel_at_end.append(job_of(digits, run_id))
    waited = envlock("runs", "wait", run_id, "--timeout", "120", project=digits)
    assert waited.returncode == 130 and "; node 1: failed (exit 3)" in waited.stdout, waited.stdout
    record = runs(digits)[run_id]
    assert record["status"] == "interrupted", "rank 0 was stopped, not left sleeping"
    node = json.loads((digits / ".envlock" / "runs" / run_id / "nodes" / "1" / "record.json").read_text())
    assert (node["status"], node["exit_code"]) == ("failed", 3)
    client = docker.from_env()
    assert not client.containers.list(all=True, filters={"name": record["container"]}), "rank 0's container removed"


def test_a_job_runs_the_example_in_the_same_image_and_reproduces(digits: Path) -> None:
    local = next(r for r in runs(digits).values() if r["scheduler"] is None)
    run_id = submitted(
        envlock(
            "submit", "--output", "out", "-i", "train.py", "-p", "note=slurm", "--slurm", "--time=10", "-J", "digits",
            "--", *TRAIN, project=digits,
        )
    )  # fmt: skip
    waited = envlock("runs", "wait", run_id, "--timeout", "240", project=digits)
    assert waited.returncode == 0, waited.stdout + (digits / ".envlock" / "runs" / run_id / "log.txt").read_text()
    assert waited.stdout.strip() == f"run {run_id}: finished (exit 0)"
    record = runs(digits)[run_id]
    job = record["scheduler"]
    assert job["job-id"].isdigit() and job["options"] == ["--time=10", "-J", "digits"] and job["node"]
    assert record["image_id"] == local["image_id"] and record["lock_hash"] == local["lock_hash"]
    assert record["outputs"] == local["outputs"], "the job's outputs are the local run's, byte for byte"
    assert record["host"]["docker-version"] and record["git"]["commit"] == local["git"]["commit"]
    # the declared input hashed on the node before the command started, the params recorded, as a local run's
    digest = hashlib.sha256((digits / "train.py").read_bytes()).hexdigest()
    assert record["inputs"]["files"] == {"train.py": digest} and record["params"]["given"] == {"note": "slurm"}
    slurm_out = (digits / ".envlock" / "runs" / run_id / f"slurm-{job['job-id']}.out").read_text()
    assert '"accuracy"' in slurm_out and f"run {run_id} (node rank 0): finished" in slurm_out
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
    late = envlock("runs", "wait", run_id, "--timeout", "1", project=digits)
    assert late.returncode == 125 and f"run {run_id} is still queued after 1 s" in late.stderr
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
