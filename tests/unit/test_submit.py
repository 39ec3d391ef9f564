"""`envlock submit --slurm` through a fake Slurm: all-or-nothing queueing, the node's task, settling from Slurm."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from envlock.cli.app import run as cli
from envlock.cli.cluster_commands import split_submit
from envlock.cluster.slurm import JobState, Slurm, batch_script, run_slurm_tool
from envlock.cluster.submit import (
    NodeRole,
    Submission,
    describe,
    node_role,
    on_node,
    run_submitted,
    sbatch_options_of,
    settle_jobs,
    submit_run,
    submitted_request,
)
from envlock.engine.launch import LaunchSpec, gpu_request
from envlock.errors import PreflightError, RegistryError, RunRecordError, RunWaitTimeoutError, SchedulerError
from envlock.lock import lockfile
from envlock.run.gitstate import GitState
from envlock.run.hostprobe import HostState
from envlock.run.records import RunRecord, RunStatus, RunStore, exit_status, wait_until_final
from envlock.run.runner import LockedImage, RunContext, RunFolders, RunRequest, run_in_image
from tests.fakes import A100, TORCH_251_AMD64, FakeEvidence, FakeLauncher, FakeSlurm, cpu_host, gpu_host, package
from tests.unit.test_runner import IMAGE, locked_project


def job_id(record: RunRecord) -> str:
    assert record.scheduler is not None and record.scheduler.job_id is not None
    return record.scheduler.job_id


def oneliner(state: str, reason: str = "None") -> str:
    return (
        f"JobId=42 JobName=envlock-demo UserId=me(1000) JobState={state} Reason={reason} ExitCode=0:0 NodeList=gpu07\n"
    )


def submit(
    project: Path, fake: FakeSlurm, options: tuple[str, ...] = ("-p", "gpu"), push: bool = False, **asked: Any
) -> RunRecord:
    lock_path = project / "envlock.lock"
    request = RunRequest(
        command=["python", "train.py", "--lr", "0.1 x"], seed=3, outputs=("out",), pass_env=("WANDB_KEY",), **asked
    )
    return submit_run(
        LockedImage(lockfile.read(lock_path), lock_path.read_text(encoding="utf-8"), "linux/amd64", IMAGE),
        Submission(request, options, "envlock-demo", push=push),
        project_dir=project,
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
    job = record.scheduler
    assert job is not None and (record.status, job.job_id, job.options) == ("queued", "42", ("-p", "gpu"))
    assert job.request.as_dict() == {"outputs": ["out"], "force": False, "gpus": None, "mlflow": None}
    assert record.image_id == IMAGE.image_id and record.passed_env == ["WANDB_KEY"] and record.host is None
    assert record.as_dict()["host"] == {} and record.as_dict()["git"] == {}, "not taken yet: {} as before"
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
    with pytest.raises(SchedulerError, match="invalid partition specified: gpu") as refused:
        submit(project, fake)
    if failing == "sbatch":
        assert "sinfo" in refused.value.hint and "between --slurm and --" in refused.value.hint
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


def test_the_command_line_splits_envlock_options_sbatch_options_and_the_command() -> None:
    head, sbatch, command = split_submit(
        ["submit", "-o", "out", "--slurm", "-o", "x.out", "-C", "a100", "--", "python", "-o"]
    )
    assert head == ["submit", "-o", "out", "--slurm"]
    assert (sbatch, command) == (["-o", "x.out", "-C", "a100"], ["python", "-o"])
    assert split_submit(["submit", "--slurm", "-p", "gpu", "--help"])[0] == ["submit", "--slurm", "--help"]


def test_submit_without_scheduler_or_command_is_one_clear_error(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["submit", "-C", str(project), "--", "python", "train.py"]) == 2
    assert "choose the scheduler" in capsys.readouterr().err
    assert cli(["submit", "-C", str(project), "--slurm", "-p", "gpu"]) == 2
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
        run_slurm_tool(["/nonexistent/sbatch", "--version"])


def test_batch_script_is_envlocks_defaults_then_one_task_per_node() -> None:
    text = batch_script(job_name="envlock-x", project_dir=Path("/p"), run_dir=Path("/p/r"), task=["envlock", "a b"])
    assert text.startswith("#!/bin/bash\n#SBATCH --job-name=envlock-x\n#SBATCH --chdir=/p\n")
    assert text.endswith(
        'exec srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 '
        "--kill-on-bad-exit=1 envlock 'a b'\n"
    )


def test_each_node_knows_its_rank_and_where_rank_0_listens() -> None:
    fake = FakeSlurm()
    two = {"SLURM_JOB_ID": "42", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    role = node_role(two, Slurm(fake))
    assert role == NodeRole(rank=1, nodes=2, master_addr="10.0.0.7", master_port=20042)
    assert role.settings == {
        "ENVLOCK_NODE_RANK": "1",
        "ENVLOCK_NNODES": "2",
        "MASTER_ADDR": "10.0.0.7",
        "MASTER_PORT": "20042",
    }
    assert ["scontrol", "show", "hostnames", "gpu[07-08]"] in fake.calls
    assert ["scontrol", "show", "node", "--oneliner", "gpu07"] in fake.calls
    assert node_role({"SLURM_JOB_ID": "42"}, Slurm(FakeSlurm())) == NodeRole(0, 1, "127.0.0.1", 20042)


SINGLE = NodeRole(0, 1, "127.0.0.1", 20042)


def node_start(
    project: Path, launcher: FakeLauncher, host: HostState, environ: dict[str, str], role: NodeRole = SINGLE
) -> Callable[[RunRecord, RunStore], RunRecord]:
    """What `envlock run-submitted` does with a queued record, with fakes for the engine and the node."""
    main = RunStore(project)

    def start(queued: RunRecord, store: RunStore) -> RunRecord:
        lock_path = main.directory(queued.run_id) / "envlock.lock"
        locked = LockedImage(lockfile.read(lock_path), lock_path.read_text(encoding="utf-8"), queued.platform, IMAGE)
        context = RunContext(
            locked=locked, host=host, git=GitState(commit="abc", dirty=False), folders=RunFolders(project, store)
        )
        return run_in_image(
            context,
            submitted_request(queued, environ, role),
            launcher=launcher,
            evidence=FakeEvidence(),
            output=lambda _s, _d: None,
            queued=on_node(queued, environ, role),
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
    record = run_submitted(store, queued.run_id, 0, node_start(project, launcher, cpu_host(), environ))
    assert (record.run_id, record.status, record.exit_code) == (queued.run_id, "finished", 0)
    assert record.scheduler is not None and (record.scheduler.job_id, record.scheduler.nodes) == ("42", "gpu07")
    assert record.host is not None and record.host.cpu_model == "AMD EPYC 7763" and "out/metrics.json" in record.outputs
    (spec,) = launcher.launched
    assert spec.command == ["python", "train.py", "--lr", "0.1 x"] and spec.environment["PYTHONHASHSEED"] == "3"
    assert spec.environment["WANDB_KEY"] == "secret" and spec.environment["SLURM_JOB_ID"] == "42"
    assert spec.gpu_devices == ("2", "3"), "only the GPUs Slurm allotted"
    assert "secret" not in (store.directory(record.run_id) / "record.json").read_text()
    with pytest.raises(RunRecordError, match="runs once"):
        run_submitted(store, queued.run_id, 0, node_start(project, launcher, cpu_host(), environ))


def test_a_submitted_runs_inputs_and_params_are_bound_on_the_node_as_a_local_runs(project: Path) -> None:
    """Declared inputs are hashed on the node before the command starts, mounted read-only, and recorded with the
    params (given and from files), as `envlock run` does; the queued record says what was asked."""
    (project / "data").mkdir()
    (project / "data" / "train.csv").write_text("x,y\n1,2\n")
    (project / "params.toml").write_text("lr = 0.1\nepochs = 3\n")
    queued = submit(
        project, FakeSlurm(), push=True, inputs=("data",), params={"epochs": "5"}, param_files=("params.toml",)
    )
    assert queued.scheduler is not None
    asked = queued.scheduler.request.as_dict()
    assert (asked["inputs"], asked["params"], asked["param-files"], asked["push"]) == (
        ["data"], {"epochs": "5"}, ["params.toml"], True
    )  # fmt: skip
    launcher = FakeLauncher()
    record = run_submitted(RunStore(project), queued.run_id, 0, node_start(project, launcher, cpu_host(), {}))
    assert record.status == "finished" and record.inputs is not None
    assert set(record.inputs.files) == {"data/train.csv"} and all(record.inputs.files.values())
    assert record.params is not None and record.params.values == {"lr": "0.1", "epochs": "5"}, "given over files'"
    (spec,) = launcher.launched
    assert any(inside == "/work/data" for _host, inside in spec.read_only), "mounted read-only"


def test_push_of_an_image_never_pushed_is_refused_before_anything_is_queued(project: Path) -> None:
    fake = FakeSlurm()
    lock_path = project / "envlock.lock"
    unpushed = replace(IMAGE, repo_digests=())
    locked = LockedImage(lockfile.read(lock_path), lock_path.read_text(encoding="utf-8"), "linux/amd64", unpushed)
    with pytest.raises(RegistryError, match="never pushed") as refused:
        submit_run(
            locked,
            Submission(RunRequest(command=["true"]), (), "envlock-demo", push=True),
            project_dir=project,
            store=RunStore(project),
            slurm=Slurm(fake),
            task=lambda run_id: ["envlock", "run-submitted", run_id],
        )
    assert "envlock build --push" in refused.value.hint
    assert fake.calls == [] and not (project / ".envlock" / "runs").exists()


def test_a_plain_submissions_request_keeps_the_keys_older_readers_know(project: Path) -> None:
    queued = submit(project, FakeSlurm())
    assert queued.scheduler is not None
    assert set(queued.scheduler.request.as_dict()) == {"outputs", "force", "gpus", "mlflow"}


def test_a_two_node_job_runs_a_container_per_node_each_with_its_record(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued = submit(project, FakeSlurm())
    store = RunStore(project)
    launchers = [FakeLauncher(), FakeLauncher(code=3)]
    records = []
    for rank in (0, 1):
        environ = {
            "SLURM_JOB_ID": "42",
            "SLURM_JOB_NUM_NODES": "2",
            "SLURM_NODEID": str(rank),
            "SLURMD_NODENAME": f"gpu0{7 + rank}",
        }
        role = NodeRole(rank, 2, "10.0.0.7", 20042)
        start = node_start(project, launchers[rank], cpu_host(), environ, role)
        records.append(run_submitted(store, queued.run_id, rank, start))
    main, other = records
    assert (main.status, other.status, other.exit_code) == ("finished", "failed", 3)
    assert store.load(queued.run_id) == main and store.node_records(queued.run_id) == {1: other}
    assert (store.for_node(1).directory(queued.run_id) / "record.json").is_file()
    assert other.scheduler is not None and (other.scheduler.node, other.scheduler.rank) == ("gpu08", 1)
    first, second = (launcher.launched[0] for launcher in launchers)
    assert first.name != second.name, "one container per node, named apart"
    assert second.environment["ENVLOCK_NODE_RANK"] == "1" and second.environment["MASTER_ADDR"] == "10.0.0.7"
    assert first.host_network and second.host_network, "nodes reach each other (NCCL, rendezvous)"
    assert other.environment["ENVLOCK_NNODES"] == "2", "the rank settings are recorded"
    assert describe(main, {}) == "slurm 42, 2 nodes" and describe(queued, {}) == "slurm 42"
    with pytest.raises(RunRecordError, match="runs once"):
        run_submitted(store, queued.run_id, 1, node_start(project, FakeLauncher(), cpu_host(), {}, role))


def test_a_node_that_fails_the_preflight_fails_the_record_with_the_reason(
    write_project: Callable[[str], Path],
) -> None:
    project = locked_project(write_project, '"torch==2.5.1"', TORCH_251_AMD64)
    queued = submit(project, FakeSlurm())
    store = RunStore(project)
    old = gpu_host("470.82.01", A100, cuda=11040)
    with pytest.raises(PreflightError):
        run_submitted(store, queued.run_id, 0, node_start(project, FakeLauncher(), old, {}))
    record = store.load(queued.run_id)
    assert record.status == "failed" and "470.82.01" in (record.error or "")


def test_a_job_cancelled_before_its_command_started_is_interrupted(project: Path) -> None:
    queued = submit(project, FakeSlurm())
    store = RunStore(project)

    def cancelled(_queued: RunRecord, _store: RunStore) -> RunRecord:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_submitted(store, queued.run_id, 0, cancelled)
    record = store.load(queued.run_id)
    assert (record.status, record.error) == ("interrupted", "the job was cancelled before its command started")


def test_settling_asks_slurm_and_closes_only_what_slurm_ended(project: Path) -> None:
    store = RunStore(project)
    fake = FakeSlurm()
    pending, cancelled, forgotten, finished = (submit(project, fake) for _ in range(4))
    done = run_submitted(store, finished.run_id, 0, node_start(project, FakeLauncher(), cpu_host(), {}))
    fake.states = {
        job_id(pending): oneliner("PENDING", "Priority"),
        job_id(cancelled): oneliner("CANCELLED"),
        job_id(done): oneliner("COMPLETED"),
    }
    removed: list[str] = []
    live, settled = settle_jobs(store, store.all(), Slurm(fake), removed.append, FakeEvidence())
    assert set(live) == {pending.run_id} and live[pending.run_id].reason == "Priority"
    by_id = {r.run_id: r for r in settled}
    assert set(by_id) == {cancelled.run_id, forgotten.run_id}, "a finished record is never touched"
    assert by_id[cancelled.run_id].status == "interrupted" and "CANCELLED" in (by_id[cancelled.run_id].error or "")
    assert by_id[forgotten.run_id].status == "interrupted" and "no longer knows" in (
        by_id[forgotten.run_id].error or ""
    )
    assert store.load(done.run_id).status == "finished" and removed == []
    node = store.for_node(1)
    assert done.scheduler is not None
    node.save(
        replace(done, status="running", container=done.container + "-1", scheduler=replace(done.scheduler, rank=1))
    )
    store.for_node(2).save(replace(done, status="queued", container=done.container + "-2"))  # killed before starting
    _, closed = settle_jobs(store, store.all(), Slurm(fake), removed.append, FakeEvidence())
    nodes = store.node_records(done.run_id)
    assert closed == [] and nodes[1].status == "failed", "a node left open is closed too"
    assert nodes[2].status == "failed", "also one whose task never wrote its facts (its rank is its folder)"
    again, _ = settle_jobs(store, store.all(), Slurm(fake), removed.append, FakeEvidence())
    assert set(again) == {pending.run_id}, "settled records are final: Slurm is not asked about them again"


def test_gpu_request_names_devices_only_when_given() -> None:
    spec = LaunchSpec("sha256:x", ["true"], "n", Path(), {}, "0:0", gpus=True)
    assert gpu_request(spec)["Count"] == -1
    chosen = gpu_request(LaunchSpec("sha256:x", ["true"], "n", Path(), {}, "0:0", gpus=True, gpu_devices=("1",)))
    assert chosen["DeviceIDs"] == ["1"] and not chosen.get("Count")


def test_waiting_returns_the_final_record_or_times_out(project: Path) -> None:
    queued = submit(project, FakeSlurm())
    answers = iter([queued, replace(queued, status="running"), replace(queued, status="finished", exit_code=0)])
    slept: list[float] = []
    done = wait_until_final(lambda: next(answers), None, poll=2.0, sleep=slept.append)
    assert (done.status, slept) == ("finished", [2.0, 2.0])
    ticks = iter([0.0, 0.0, 1.5, 3.0])
    with pytest.raises(RunWaitTimeoutError, match="still queued after 3 s") as late:
        wait_until_final(lambda: queued, 3.0, poll=2.0, clock=lambda: next(ticks), sleep=lambda _s: None)
    assert late.value.exit_code == 19 and queued.run_id in late.value.hint


def test_a_waited_runs_exit_status_is_its_commands(project: Path) -> None:
    queued = submit(project, FakeSlurm())

    def ended(status: RunStatus, code: int | None) -> RunRecord:
        return replace(queued, status=status, exit_code=code)

    assert exit_status(ended("finished", 0)) == 0
    assert exit_status(ended("failed", 3)) == 3
    assert exit_status(ended("interrupted", 130)) == 130
    assert exit_status(ended("interrupted", None)) == 130, "cancelled while queued"
    assert exit_status(ended("failed", None)) == 1, "never ran its command (preflight, engine)"
