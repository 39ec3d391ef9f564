"""`envlock submit --slurm` through a fake Slurm: all-or-nothing queueing, the node's task, settling from Slurm."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from envlock import lockfile
from envlock.cli import _split_submit
from envlock.cli import run as cli
from envlock.gitstate import GitState
from envlock.launch import LaunchSpec, gpu_request
from envlock.preflight import PreflightError
from envlock.runner import RunRequest, run_in_image
from envlock.runs import RunRecord, RunRecordError, RunStore
from envlock.slurm import JobState, SchedulerError, Slurm, batch_script, run_command
from envlock.submit import (
    Submission,
    check_single_node,
    on_node,
    run_submitted,
    sbatch_options_of,
    settle_jobs,
    submit_run,
    submitted_request,
)
from tests.fakes import TORCH_251_AMD64, package
from tests.unit.test_hostprobe import A100, cpu_host, gpu_host
from tests.unit.test_runner import IMAGE, FakeLauncher, locked_project


@dataclass
class FakeSlurm:
    """Answers sbatch / scontrol / scancel like Slurm 22.05 does; `fail` maps a program to its stderr."""

    states: dict[str, str] = field(default_factory=dict)  # job id → scontrol's one-line answer
    fail: dict[str, str] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)
    next_id: int = 41

    def __call__(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        args = list(args)
        self.calls.append(args)
        key = " ".join(args[:2]) if args[0] == "scontrol" else args[0]
        if key in self.fail:
            return subprocess.CompletedProcess(args, 1, "", self.fail[key])
        if args[0] == "sbatch":
            self.next_id += 1
            return subprocess.CompletedProcess(args, 0, f"{self.next_id};envlock\n", "")
        if args[:3] == ["scontrol", "show", "job"]:
            job = args[-1]
            if job not in self.states:
                return subprocess.CompletedProcess(args, 1, "", "slurm_load_jobs error: Invalid job id specified\n")
            return subprocess.CompletedProcess(args, 0, self.states[job], "")
        return subprocess.CompletedProcess(args, 0, "", "")


def oneliner(state: str, reason: str = "None") -> str:
    return (
        f"JobId=42 JobName=envlock-demo UserId=me(1000) JobState={state} Reason={reason} ExitCode=0:0 NodeList=gpu07\n"
    )


def submit(project: Path, fake: FakeSlurm, options: tuple[str, ...] = ("-p", "gpu")) -> RunRecord:
    lock_path = project / "envlock.lock"
    request = RunRequest(["python", "train.py", "--lr", "0.1 x"], seed=3, outputs=("out",), pass_env=("WANDB_KEY",))
    return submit_run(
        lockfile.read(lock_path),
        lock_path.read_text(encoding="utf-8"),
        "linux/amd64",
        Submission(request, options, "envlock-demo"),
        project_dir=project,
        image=IMAGE,
        store=RunStore(project),
        slurm=Slurm(fake),
        task=lambda run_id: ["/opt/venv/bin/python", "-m", "envlock", "run-submitted", run_id, "--project", "/p q"],
    )


@pytest.fixture
def project(write_project: Callable[[str], Path]) -> Path:
    return locked_project(write_project, '"numpy"', [package("numpy", "2.1.3")])


def test_submit_queues_a_record_with_the_job_id_before_releasing_the_job(project: Path) -> None:
    fake = FakeSlurm()
    record = submit(project, fake)
    store = RunStore(project)
    assert store.load(record.run_id) == record
    assert (record.status, record.scheduler["job-id"], record.scheduler["options"]) == ("queued", "42", ["-p", "gpu"])
    assert record.scheduler["request"] == {"outputs": ["out"], "force": False, "gpus": None, "mlflow": None}
    assert record.image_id == IMAGE.image_id and record.passed_env == ["WANDB_KEY"] and record.host == {}
    sbatch, release = fake.calls
    script = store.directory(record.run_id) / "job.sh"
    assert sbatch == ["sbatch", "--parsable", "--hold", "-p", "gpu", str(script)], "held: it cannot start unrecorded"
    assert release == ["scontrol", "release", "42"]
    text = script.read_text()
    assert f"#SBATCH --output={store.directory(record.run_id).resolve()}/slurm-%j.out" in text
    assert f"run-submitted {record.run_id} --project '/p q'" in text, "the task line is shell-quoted"
    assert (store.directory(record.run_id) / "envlock.lock").read_text() == (project / "envlock.lock").read_text()


@pytest.mark.parametrize("failing", ["sbatch", "scontrol release"])
def test_a_refused_submission_leaves_nothing_behind(project: Path, failing: str) -> None:
    fake = FakeSlurm(fail={failing: "sbatch: error: invalid partition specified: gpu\n"})
    with pytest.raises(SchedulerError, match="invalid partition specified: gpu"):
        submit(project, fake)
    assert not (project / ".envlock" / "runs").exists() or not any((project / ".envlock" / "runs").iterdir())
    if failing == "scontrol release":
        assert fake.calls[-1] == ["scancel", "42"], "the held job is cancelled, not left behind"


def test_envlocks_own_sbatch_options_are_refused() -> None:
    assert sbatch_options_of(["-p", "gpu", "--time=1:00:00", "--gres=gpu:1"]) == (
        "-p",
        "gpu",
        "--time=1:00:00",
        "--gres=gpu:1",
    )
    for owned in ("--hold", "--parsable", "--wrap=hostname"):
        with pytest.raises(SchedulerError, match="envlock's own"):
            sbatch_options_of(["-p", "gpu", owned])


@pytest.mark.parametrize("nodes", [["-N", "2"], ["-N2"], ["--nodes=2-4"], ["--nodes", "3"]])
def test_more_than_one_node_is_refused_with_what_to_do_instead(nodes: list[str]) -> None:
    with pytest.raises(SchedulerError, match="one container on one node") as refused:
        sbatch_options_of(["-p", "gpu", *nodes])
    assert "--gres=gpu:8" in refused.value.hint
    assert sbatch_options_of(["-N", "1", "--nodes=1"]) == ("-N", "1", "--nodes=1")


def test_a_node_given_several_nodes_fails_the_record(project: Path) -> None:
    queued = submit(project, FakeSlurm())
    store = RunStore(project)

    def start(_queued: RunRecord) -> RunRecord:
        check_single_node({"SLURM_JOB_NUM_NODES": "2"})
        raise AssertionError("not reached")

    with pytest.raises(SchedulerError):
        run_submitted(store, queued.run_id, start)
    record = store.load(queued.run_id)
    assert record.status == "failed" and "given 2 nodes" in (record.error or "")


def test_the_command_line_splits_envlock_options_sbatch_options_and_the_command() -> None:
    head, parsed = _split_submit(["submit", "-o", "out", "--slurm", "-o", "x.out", "-C", "a100", "--", "python", "-o"])
    assert head == ["submit", "-o", "out", "--slurm"]
    assert (parsed.sbatch, parsed.command) == (["-o", "x.out", "-C", "a100"], ["python", "-o"])
    assert _split_submit(["submit", "--slurm", "-p", "gpu", "--help"])[0] == ["submit", "--slurm", "--help"]


def test_submit_without_scheduler_or_command_is_one_clear_error(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["submit", "-C", str(project), "--", "python", "train.py"]) == 1
    assert "choose the scheduler" in capsys.readouterr().err
    assert cli(["submit", "-C", str(project), "--slurm", "-p", "gpu"]) == 1
    assert "no command to run: it goes after --" in capsys.readouterr().err
    assert cli(["submit", "-C", str(project), "--slurm", "--hold", "--", "true"]) == 17
    err = capsys.readouterr().err
    assert "envlock's own" in err and "Traceback" not in err


def test_the_slurm_adapter_reads_scontrol_and_reports_failures() -> None:
    fake = FakeSlurm(states={"42": oneliner("PENDING", "BeginTime")})
    slurm = Slurm(fake)
    assert slurm.state("42") == JobState("PENDING", "BeginTime", "gpu07", "0:0")
    assert slurm.state("43") is None, "a job Slurm forgot is None, not an error"
    assert JobState("TIMEOUT").final and not JobState("RUNNING").final
    broken = Slurm(FakeSlurm(fail={"scontrol show": "slurm_load_jobs error: Unable to contact slurm controller\n"}))
    with pytest.raises(SchedulerError, match="Unable to contact slurm controller"):
        broken.state("42")
    with pytest.raises(SchedulerError, match="is not installed"):
        run_command(["/nonexistent/sbatch", "--version"])


def test_batch_script_is_envlocks_defaults_then_one_exec() -> None:
    text = batch_script(job_name="envlock-x", project_dir=Path("/p"), run_dir=Path("/p/r"), task=["envlock", "a b"])
    assert text.startswith("#!/bin/bash\n#SBATCH --job-name=envlock-x\n#SBATCH --chdir=/p\n")
    assert text.endswith("set -euo pipefail\nexec envlock 'a b'\n")


def node_start(project: Path, launcher: FakeLauncher, host, environ: dict[str, str]):  # type: ignore[no-untyped-def]
    """What `envlock run-submitted` does with a queued record, with fakes for the engine and the node."""
    store = RunStore(project)

    def start(queued: RunRecord) -> RunRecord:
        lock_path = store.directory(queued.run_id) / "envlock.lock"
        return run_in_image(
            lockfile.read(lock_path),
            lock_path.read_text(encoding="utf-8"),
            queued.platform,
            submitted_request(queued, environ),
            project_dir=project,
            image=IMAGE,
            host=host,
            git=GitState(commit="abc", dirty=False),
            launcher=launcher,
            store=store,
            output=lambda _s, _d: None,
            queued=on_node(queued, environ),
        )

    return start


def test_the_nodes_task_runs_the_queued_record_once(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queued = submit(project, FakeSlurm())
    monkeypatch.setenv("WANDB_KEY", "secret")
    environ = {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "gpu07", "SLURM_JOB_GPUS": "2,3", "SLURM_PROCID": "0"}
    for name, value in environ.items():
        monkeypatch.setenv(name, value)  # the runner passes values from the process environment, as on a node
    launcher = FakeLauncher(writes={"out/metrics.json": b"{}"})
    store = RunStore(project)
    record = run_submitted(store, queued.run_id, node_start(project, launcher, cpu_host(), environ))
    assert (record.run_id, record.status, record.exit_code) == (queued.run_id, "finished", 0)
    assert record.scheduler["job-id"] == "42" and record.scheduler["nodes"] == "gpu07"
    assert record.host["cpu-model"] == "AMD EPYC 7763" and "out/metrics.json" in record.outputs
    (spec,) = launcher.launched
    assert spec.command == ["python", "train.py", "--lr", "0.1 x"] and spec.environment["PYTHONHASHSEED"] == "3"
    assert spec.environment["WANDB_KEY"] == "secret" and spec.environment["SLURM_JOB_ID"] == "42"
    assert spec.gpu_devices == ("2", "3"), "only the GPUs Slurm allotted"
    assert "secret" not in (store.directory(record.run_id) / "record.json").read_text()
    with pytest.raises(RunRecordError, match="runs once"):
        run_submitted(store, queued.run_id, node_start(project, launcher, cpu_host(), environ))


def test_a_node_that_fails_the_preflight_fails_the_record_with_the_reason(
    write_project: Callable[[str], Path],
) -> None:
    project = locked_project(write_project, '"torch==2.5.1"', TORCH_251_AMD64)
    queued = submit(project, FakeSlurm())
    store = RunStore(project)
    old = gpu_host("470.82.01", A100, cuda=11040)
    with pytest.raises(PreflightError):
        run_submitted(store, queued.run_id, node_start(project, FakeLauncher(), old, {}))
    record = store.load(queued.run_id)
    assert record.status == "failed" and "470.82.01" in (record.error or "")


def test_a_job_cancelled_before_its_command_started_is_interrupted(project: Path) -> None:
    queued = submit(project, FakeSlurm())
    store = RunStore(project)

    def cancelled(_queued: RunRecord) -> RunRecord:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_submitted(store, queued.run_id, cancelled)
    record = store.load(queued.run_id)
    assert (record.status, record.error) == ("interrupted", "the job was cancelled before its command started")


def test_settling_asks_slurm_and_closes_only_what_slurm_ended(project: Path) -> None:
    store = RunStore(project)
    fake = FakeSlurm()
    pending, cancelled, forgotten, finished = (submit(project, fake) for _ in range(4))
    done = run_submitted(store, finished.run_id, node_start(project, FakeLauncher(), cpu_host(), {}))
    fake.states = {
        pending.scheduler["job-id"]: oneliner("PENDING", "Priority"),
        cancelled.scheduler["job-id"]: oneliner("CANCELLED"),
        done.scheduler["job-id"]: oneliner("COMPLETED"),
    }
    removed: list[str] = []
    live, settled = settle_jobs(store, store.all(), Slurm(fake), removed.append)
    assert set(live) == {pending.run_id} and live[pending.run_id].reason == "Priority"
    by_id = {r.run_id: r for r in settled}
    assert set(by_id) == {cancelled.run_id, forgotten.run_id}, "a finished record is never touched"
    assert by_id[cancelled.run_id].status == "interrupted" and "CANCELLED" in (by_id[cancelled.run_id].error or "")
    assert by_id[forgotten.run_id].status == "interrupted" and "no longer knows" in (
        by_id[forgotten.run_id].error or ""
    )
    assert store.load(done.run_id).status == "finished" and removed == []
    again, _ = settle_jobs(store, store.all(), Slurm(fake), removed.append)
    assert set(again) == {pending.run_id}, "settled records are final: Slurm is not asked about them again"


def test_gpu_request_names_devices_only_when_given() -> None:
    spec = LaunchSpec("sha256:x", ["true"], "n", Path(), {}, "0:0", gpus=True)
    assert gpu_request(spec)["Count"] == -1
    chosen = gpu_request(LaunchSpec("sha256:x", ["true"], "n", Path(), {}, "0:0", gpus=True, gpu_devices=("1",)))
    assert chosen["DeviceIDs"] == ["1"] and not chosen.get("Count")
