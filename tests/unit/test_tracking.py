"""MLflow tracking through a fake tracker: the run is tagged with the stack, continued in the container, ended with
the command's outcome; URIs a container cannot reach are refused up front."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest

from envlock.cli.app import run as cli
from envlock.errors import EnvlockError, TrackingError
from envlock.run.hostprobe import HostState
from envlock.run.records import RunRecord, RunStore
from envlock.run.runner import RunRequest
from envlock.run.tracking import (
    TrackedRun,
    Tracking,
    TrackingSettings,
    tracking_settings,
    tracking_target,
)
from tests.fakes import A100, TORCH_251_AMD64, FakeEvidence, FakeLauncher, FakeTracker, cpu_host, gpu_host, package
from tests.unit.test_runner import locked_project
from tests.unit.test_runner import run as run_project


def tracked_run(
    project: Path,
    tracker: FakeTracker,
    launcher: FakeLauncher,
    host: HostState | None = None,
    reuse: str | None = None,
) -> RunRecord:
    from envlock.run.gitstate import GitState  # noqa: PLC0415
    from envlock.run.runner import run_in_image  # noqa: PLC0415
    from tests.unit.test_runner import context  # noqa: PLC0415

    return run_in_image(
        context(project, host or cpu_host(), GitState(commit="c0ffee", dirty=False)),
        RunRequest(command=["python", "train.py"], seed=5),
        launcher=launcher,
        evidence=FakeEvidence(),
        output=lambda _s, _d: None,
        tracking=Tracking(tracker, "demo", reuse),
    )


def test_the_run_is_tagged_with_the_stack_and_continued_in_the_container(
    write_project: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = locked_project(write_project, '"torch==2.5.1"', TORCH_251_AMD64)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-123")
    tracker, launcher = FakeTracker(), FakeLauncher()
    record = tracked_run(project, tracker, launcher, host=gpu_host("550.54.15", A100))
    ((experiment, run_name, reuse, tags),) = tracker.started
    assert (experiment, run_name, reuse) == ("demo", record.run_id, None)
    assert tags["envlock.image.digest"] == record.repo_digests[-1] and tags["envlock.lock_hash"] == record.lock_hash
    assert tags["envlock.cuda"] == "12.4" and tags["envlock.cuda.cudnn"] == "9.1.0.70"
    assert tags["envlock.cuda.driver_min"] == "550.54.14" and "sm_90" in tags["envlock.cuda.archs"]
    assert tags["envlock.host.driver"] == "550.54.15" and tags["envlock.host.gpus"] == "NVIDIA A100-SXM4-80GB (sm_80)"
    assert tags["mlflow.source.git.commit"] == "c0ffee" and tags["envlock.seed"] == "5"
    (spec,) = launcher.launched
    assert spec.environment["MLFLOW_RUN_ID"] == "r" * 32 and spec.environment["MLFLOW_EXPERIMENT_ID"] == "7"
    assert spec.environment["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000" and spec.host_network
    assert spec.environment["MLFLOW_TRACKING_TOKEN"] == "tok-123", "the client's credentials go in by name"
    text = (RunStore(project).directory(record.run_id) / "record.json").read_text()
    assert "tok-123" not in text and "MLFLOW_TRACKING_TOKEN" in record.passed_env
    assert record.tracking is not None and record.tracking.as_dict() == {
        "kind": "mlflow",
        "uri": "http://127.0.0.1:5000",
        "run-id": "r" * 32,
        "experiment-id": "7",
        "link": f"http://127.0.0.1:5000/#/experiments/7/runs/{'r' * 32}",
    }
    assert tracker.finished == [("r" * 32, "FINISHED")]


@pytest.mark.parametrize(
    ("launcher", "status"), [(FakeLauncher(code=2), "FAILED"), (FakeLauncher(interrupt=True), "KILLED")]
)
def test_the_run_ends_with_the_commands_outcome(
    write_project: Callable[[str], Path], launcher: FakeLauncher, status: str
) -> None:
    project = locked_project(write_project, '"numpy"', [package("numpy", "2.1.3")])
    tracker = FakeTracker()
    with contextlib.suppress(KeyboardInterrupt):
        tracked_run(project, tracker, launcher, reuse="a" * 32)
    assert tracker.started[0][2] == "a" * 32, "MLFLOW_RUN_ID on the host: that run is reused"
    assert tracker.finished == [("a" * 32, status)]


def test_an_unreachable_tracking_server_stops_the_run_before_anything_runs(
    write_project: Callable[[str], Path],
) -> None:
    project = locked_project(write_project, '"numpy"', [package("numpy", "2.1.3")])
    launcher = FakeLauncher()
    with pytest.raises(TrackingError, match="unreachable"):
        tracked_run(project, FakeTracker(fail_start=True), launcher)
    assert launcher.launched == [] and RunStore(project).all() == []


def test_tracking_uris_say_how_a_container_reaches_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracking_target("http://127.0.0.1:5000").host_network
    assert tracking_target("http://localhost:5000/").host_network
    remote = tracking_target("https://mlflow.example.com")
    assert not remote.host_network and remote.mount is None
    monkeypatch.chdir(tmp_path)
    local = tracking_target("mlruns")
    assert local.mount == tmp_path / "mlruns" and local.uri == (tmp_path / "mlruns").as_uri()
    assert local.environment["MLFLOW_ALLOW_FILE_STORE"] == "true"
    assert tracking_target(f"file://{tmp_path}/store").mount == tmp_path / "store"
    with pytest.raises(TrackingError, match="cannot be reached from inside a container") as refused:
        tracking_target("sqlite:///mlflow.db")
    assert "mlflow server" in refused.value.hint
    run = TrackedRun(tracking_target("https://user:pw@mlflow.example.com"), "x", "1")
    assert run.recorded().uri == "https://mlflow.example.com" and "pw" not in run.link


def test_settings_come_from_the_flag_or_mlflows_variables() -> None:
    environ: dict[str, str] = {}
    assert tracking_settings(None, False, "digits", environ) is None, "nothing configured: no tracking"
    environ["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:5000"
    assert tracking_settings(None, False, "digits", environ) == TrackingSettings("http://127.0.0.1:5000", "digits")
    assert tracking_settings(None, True, "digits", environ) is None, "--no-mlflow wins over the variable"
    environ |= {"MLFLOW_EXPERIMENT_NAME": "sweeps", "MLFLOW_RUN_ID": "b" * 32}
    assert tracking_settings("http://other:5000", False, "digits", environ) == TrackingSettings(
        "http://other:5000", "sweeps", "b" * 32
    )
    with pytest.raises(EnvlockError, match="contradict"):
        tracking_settings("http://other:5000", True, "digits", environ)


def test_run_refuses_a_sqlite_tracking_uri_in_one_line(
    write_project: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    project = locked_project(write_project, '"numpy"', [package("numpy", "2.1.3")])
    assert cli(["run", "-C", str(project), "--mlflow", "sqlite:///mlflow.db", "--", "true"]) == 125
    err = capsys.readouterr().err
    assert "cannot be reached from inside a container" in err and "Traceback" not in err
    assert RunStore(project).all() == []


def test_a_plain_run_without_tracking_is_unchanged(write_project: Callable[[str], Path]) -> None:
    project = locked_project(write_project, '"numpy"', [package("numpy", "2.1.3")])
    record = run_project(project, FakeLauncher(), cpu_host(), RunRequest(command=["true"]))
    assert record.tracking is None
