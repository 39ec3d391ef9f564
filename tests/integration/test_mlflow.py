"""MLflow tracking against a real tracking server (mlflow server, sqlite backend, on 127.0.0.1) and a real file
store, with the example run in its pinned image by the real Docker engine (and once as a real Slurm job)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from mlflow.tracking import MlflowClient

from tests.integration.example import digits_repo
from tests.integration.localregistry import free_port

pytestmark = [pytest.mark.docker, pytest.mark.network]
BIN = Path(sys.executable).parent
ENVLOCK = str(BIN / "envlock")
TRAIN = ["python", "train.py", "--out", "out"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on a free loopback port, stopped (with its workers) at the end."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:  # noqa: S310 (loopback)
                    if answer.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A git copy of the example (which logs to MLflow when given a run), built once."""
    project = digits_repo(tmp_path_factory.mktemp("digits-mlflow"))
    done = subprocess.run([ENVLOCK, "build", "-C", str(project)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    yield project
    client = docker.from_env()
    for image in client.images.list(name="digits"):
        client.images.remove(image.id, force=True)


def envlock(*args: str, project: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [ENVLOCK, *args[:1], "-C", str(project), *args[1:]],
        capture_output=True,
        text=True,
        check=False,
        env={**clean, **env},
    )


def record_of(project: Path, stderr: str) -> dict[str, Any]:
    run_id = next(line.split()[1].rstrip(":") for line in stderr.splitlines() if line.startswith("run "))
    record: dict[str, Any] = json.loads((project / ".envlock" / "runs" / run_id / "record.json").read_text())
    return record


def test_a_run_is_tagged_with_the_stack_and_the_examples_metrics_land_on_it(server: str, digits: Path) -> None:
    done = envlock("run", "--mlflow", server, "--output", "out", "--", *TRAIN, project=digits)
    assert done.returncode == 0, done.stderr
    record = record_of(digits, done.stderr)
    tracking = record["tracking"]
    assert tracking["uri"] == server and f"{server}/#/experiments/" in done.stderr
    client = MlflowClient(server)
    run = client.get_run(tracking["run-id"])
    assert run.info.status == "FINISHED" and run.info.run_name == record["run_id"]
    metrics = json.loads((digits / "out" / "metrics.json").read_text())
    assert run.data.metrics == {"accuracy": metrics["accuracy"], "log_loss": metrics["log_loss"]}, "logged inside"
    assert run.data.params["seed"] == "0" and run.data.tags["model_sha256"] == metrics["model_sha256"]
    tags = run.data.tags
    assert tags["envlock.image.id"] == record["image_id"] == tags["envlock.image.digest"]
    assert tags["envlock.lock_hash"] == record["lock_hash"] and tags["envlock.cuda"] == "cpu"
    assert tags["envlock.host.driver"] == "none" and tags["envlock.host.gpus"] == "none"
    assert tags["mlflow.source.git.commit"] == record["git"]["commit"]
    experiment = client.get_experiment_by_name("digits")
    assert experiment is not None and experiment.experiment_id == tracking["experiment-id"]
    assert len(client.search_runs([experiment.experiment_id])) == 1, "the container continued envlock's run"


def test_a_run_started_elsewhere_is_reused_and_a_failure_is_failed(server: str, digits: Path) -> None:
    client = MlflowClient(server)
    experiment_id = client.create_experiment("sweep")
    mine = client.create_run(experiment_id, run_name="lr-0.1").info.run_id
    done = envlock("run", "--", *TRAIN, project=digits, MLFLOW_TRACKING_URI=server, MLFLOW_RUN_ID=mine)
    assert done.returncode == 0, done.stderr
    run = client.get_run(mine)
    assert run.data.tags["envlock.run_id"] == record_of(digits, done.stderr)["run_id"]
    assert "accuracy" in run.data.metrics and run.info.status == "FINISHED"
    assert len(client.search_runs([experiment_id])) == 1
    failing = envlock("run", "--mlflow", server, "--", "python", "-c", "import sys; sys.exit(3)", project=digits)
    assert failing.returncode == 3
    assert client.get_run(record_of(digits, failing.stderr)["tracking"]["run-id"]).info.status == "FAILED"


def test_a_file_store_is_mounted_at_its_own_path(digits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "mlruns"
    done = envlock("run", "--mlflow", str(store), "--", *TRAIN, project=digits)
    assert done.returncode == 0, done.stderr
    tracking = record_of(digits, done.stderr)["tracking"]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads file stores only when allowed
    run = MlflowClient(store.as_uri()).get_run(tracking["run-id"])
    assert tracking["uri"] == store.as_uri() and run.info.status == "FINISHED" and "accuracy" in run.data.metrics


def test_a_dead_server_stops_the_run_before_it_starts(digits: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    done = envlock("run", "--mlflow", dead, "--", *TRAIN, project=digits)
    assert done.returncode == 125, done.stderr  # envlock's own failure in `run`: never the command's status
    assert done.stderr.splitlines()[0] == f"error: MLflow at {dead} is unreachable: Connection refused"
    assert "elsewhere 18" in done.stderr.splitlines()[1] and done.stderr.splitlines()[2].startswith("hint: ")
    records = list((digits / ".envlock" / "runs").glob("*/record.json"))
    assert not any(dead in path.read_text() for path in records), "no record of a run that never started"


@pytest.mark.slurm
def test_a_slurm_job_reports_into_the_mlflow_run(server: str, digits: Path) -> None:
    done = envlock(
        "submit", "--mlflow", server, "--output", "out", "--slurm", "--time=10", "--", *TRAIN, project=digits
    )
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split()[1].rstrip(":")
    path = digits / ".envlock" / "runs" / run_id / "record.json"
    deadline = time.monotonic() + 240
    while json.loads(path.read_text())["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(1)
    record = json.loads(path.read_text())
    assert record["status"] == "finished", (path.parent / "log.txt").read_text()
    run = MlflowClient(server).get_run(record["tracking"]["run-id"])
    assert run.data.tags["envlock.slurm.job_id"] == record["scheduler"]["job-id"]
    assert run.data.tags["envlock.image.id"] == record["image_id"] and "accuracy" in run.data.metrics
