"""Run records as files: version 1 records written by an earlier envlock read, typed, and round-trip; damaged or
hand-edited ones are refused with every problem named (exit 21), never a traceback; newer versions are refused."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from envlock.cli.app import run as cli
from envlock.cluster.slurm import Slurm
from envlock.cluster.submit import Submission, submit_run, submitted_tracking
from envlock.errors import RunRecordError
from envlock.lock import lockfile
from envlock.run.records import RECORD_VERSION, RunRecord, RunStore
from envlock.run.runner import LockedImage, RunRequest
from envlock.run.tracking import TrackingSettings
from tests.fakes import FakeSlurm, package
from tests.unit.test_runner import IMAGE, locked_project

RECORDS = Path(__file__).parents[1] / "data" / "records"
V1 = sorted(path.name for path in RECORDS.glob("v1-*.json"))


def v1(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RECORDS / name).read_text(encoding="utf-8"))
    return data


def test_every_kind_of_record_is_kept_as_test_data() -> None:
    assert V1 == [
        "v1-local-cpu.json",
        "v1-local-gpu-mlflow.json",
        "v1-slurm-cancelled.json",
        "v1-slurm-node0.json",
        "v1-slurm-node1.json",
        "v1-slurm-queued.json",
    ]
    assert RECORD_VERSION == 6 and all(v1(name)["record_version"] == 1 for name in V1)


@pytest.mark.parametrize("name", V1)
def test_a_version_1_record_reads_and_writes_back_key_for_key(name: str) -> None:
    data = v1(name)
    record = RunRecord.from_dict(data)
    written = json.loads(json.dumps(record.as_dict()))
    # Version 3's fields: unknown then.
    added: dict[str, Any] = {"declared_outputs": [], "inputs": None, "gpus": None, "log_sha256": None}
    git = {**data["git"], "untracked-saved": {}, "untracked-skipped": {}} if data["git"] else {}
    lineage: dict[str, Any] = {"links": [], "tainted": {}, "params": None, "chain": None, "package_versions": {}}
    assert written == {**data, **added, **lineage, "git": git, "record_version": 6, "runtime": None}, (
        "the same keys and values, versions 3, 4, 5 and 6's added"
    )
    assert RunRecord.from_dict(written) == record


def test_version_1_parts_come_back_typed() -> None:
    gpu = RunRecord.from_dict(v1("v1-local-gpu-mlflow.json"))
    assert gpu.host is not None and gpu.host.driver_version == "550.54.15" and gpu.host.is_gpu_host
    assert [g.arch for g in gpu.host.gpus] == ["sm_80", "sm_80"]
    assert gpu.git is not None and (gpu.git.commit, gpu.git.dirty) == ("c0ffee", False)
    assert gpu.tracking is not None and gpu.tracking.run_id == "r" * 32
    assert gpu.tracking.link.endswith(f"/#/experiments/7/runs/{'r' * 32}")

    local = RunRecord.from_dict(v1("v1-local-cpu.json"))
    assert local.git is not None and local.git.dirty and local.git.diff_sha256 is not None
    assert local.scheduler is None and local.tracking is None and local.host is not None
    assert local.host.nvml_error is not None

    queued = RunRecord.from_dict(v1("v1-slurm-queued.json"))
    assert (queued.git, queued.host) == (None, None), "not taken yet ({} in the file)"
    assert queued.scheduler is not None and queued.scheduler.job_id == "42"
    assert queued.scheduler.options == ("-p", "gpu") and queued.scheduler.request.outputs == ("out",)
    assert queued.scheduler.node is None and queued.scheduler.request.mlflow is None

    node = RunRecord.from_dict(v1("v1-slurm-node1.json"))
    assert node.scheduler is not None and (node.scheduler.rank, node.scheduler.node) == (1, "gpu08")
    assert node.scheduler.nodes == "gpu[07-08]" and (node.status, node.exit_code) == ("failed", 3)

    cancelled = RunRecord.from_dict(v1("v1-slurm-cancelled.json"))
    assert cancelled.scheduler is not None and cancelled.scheduler.state == "CANCELLED"
    assert cancelled.status == "interrupted" and cancelled.host is None


def _set(data: dict[str, Any], dotted: str, value: object) -> dict[str, Any]:
    damaged = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    table: Any = damaged
    for key in parents:
        table = table[int(key)] if isinstance(table, list) else table[key]
    table[last] = value
    return damaged


@pytest.mark.parametrize(
    ("name", "field", "value", "named"),
    [
        (
            "v1-local-gpu-mlflow.json",
            "host.gpus",
            "NVIDIA A100",
            "host.gpus: must be a list of tables, not 'NVIDIA A100'",
        ),
        (
            "v1-local-gpu-mlflow.json",
            "host.gpus.0.memory-mib",
            "80GB",
            "host.gpus[0].memory-mib: must be an integer, not '80GB'",
        ),
        (
            "v1-local-gpu-mlflow.json",
            "host.driver-version",
            550,
            "host.driver-version: must be a string or null, not 550",
        ),
        ("v1-local-gpu-mlflow.json", "tracking.run-id", None, "tracking.run-id: must be a string, not None"),
        ("v1-local-cpu.json", "git.dirty", "yes", "git.dirty: must be true or false, not 'yes'"),
        (
            "v1-local-cpu.json",
            "git.commit",
            "--upload-pack=evil",
            "git.commit: must be a string like [0-9a-f]{1,64} or null, not '--upload-pack=evil'",
        ),
        ("v1-local-cpu.json", "run_id", "../../elsewhere", "run_id: must be a string like"),
        (
            "v1-local-cpu.json",
            "status",
            "done",
            "status: must be one of queued, running, finished, failed, interrupted, not 'done'",
        ),
        ("v1-local-cpu.json", "seed", True, "seed: must be an integer, not True"),
        ("v1-local-cpu.json", "outputs", ["out"], "outputs: must be a table of strings or nulls, not ['out']"),
        ("v1-local-cpu.json", "git", "abc123", "git: must be a table, not 'abc123'"),
        ("v1-slurm-node1.json", "scheduler.rank", "1", "scheduler.rank: must be an integer or null, not '1'"),
        ("v1-slurm-node1.json", "scheduler.job-id", 42, "scheduler.job-id: must be a string or null, not 42"),
        (
            "v1-slurm-queued.json",
            "scheduler.request.force",
            "no",
            "scheduler.request.force: must be true or false, not 'no'",
        ),
        (
            "v1-slurm-queued.json",
            "scheduler.request.mlflow",
            {"uri": 5},
            "scheduler.request.mlflow.uri: must be a string, not 5",
        ),
        ("v1-slurm-queued.json", "scheduler.jobid", "42", "scheduler.jobid: unknown key (did you mean 'job-id'?)"),
        ("v1-local-cpu.json", "exit_cod", 0, "exit_cod: unknown key (did you mean 'exit_code'?)"),
    ],
)
def test_a_damaged_record_names_what_is_wrong(name: str, field: str, value: object, named: str) -> None:
    with pytest.raises(RunRecordError) as refused:
        RunRecord.from_dict(_set(v1(name), field, value), "run record X")
    assert refused.value.exit_code == 21
    assert named in " ".join((refused.value.message, *refused.value.details))


def test_every_problem_is_reported_at_once() -> None:
    data = _set(_set(v1("v1-local-cpu.json"), "seed", "7"), "host.kernel", None)
    del data["container"]
    with pytest.raises(RunRecordError) as refused:
        RunRecord.from_dict(data, "run record X")
    problems = (refused.value.message, *refused.value.details)
    assert "(and 2 more)" in refused.value.message and len(problems) == 3
    assert problems == (
        "run record X is damaged: host.kernel: must be a string, not None (and 2 more)",
        "seed: must be an integer, not '7'",
        "container: missing",
    )


@pytest.mark.parametrize("data", [[], "record", None, 3])
def test_a_record_that_is_not_a_table_is_refused(data: object) -> None:
    with pytest.raises(RunRecordError, match="must be a table"):
        RunRecord.from_dict(data)


def test_a_newer_version_is_refused_with_a_hint_to_upgrade() -> None:
    with pytest.raises(RunRecordError) as refused:
        RunRecord.from_dict({**v1("v1-local-cpu.json"), "record_version": 7, "energy-kwh": 1.5})
    assert "record version 7" in refused.value.message and "reads versions 1 to 6" in refused.value.message
    assert "upgrade envlock" in refused.value.hint


@pytest.mark.parametrize("version", [0, "2", True, None])
def test_a_version_that_is_no_version_is_damage(version: object) -> None:
    with pytest.raises(RunRecordError, match="record_version: must be one of"):
        RunRecord.from_dict({**v1("v1-local-cpu.json"), "record_version": version})


def _into_project(project: Path, *names: str) -> RunStore:
    store = RunStore(project)
    for name in names:
        record = RunRecord.from_dict(v1(name))
        rank = record.scheduler.rank if record.scheduler and record.scheduler.rank else 0
        target = store.for_node(rank) if rank else store
        target.directory(record.run_id).mkdir(parents=True)
        shutil.copyfile(RECORDS / name, target.directory(record.run_id) / "record.json")
    return store


def test_runs_show_reads_the_records_an_earlier_envlock_wrote(
    write_project: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    project = write_project('[project]\nname = "demo"\ndependencies = []\n')
    _into_project(project, "v1-slurm-node0.json", "v1-slurm-node1.json", "v1-local-gpu-mlflow.json")
    run_id = v1("v1-slurm-node0.json")["run_id"]
    assert cli(["runs", "-C", str(project), "show", run_id]) == 0
    out = capsys.readouterr().out
    assert "job       slurm 42, 2 nodes" in out and "node 1    gpu08: failed, exit 3" in out
    assert cli(["runs", "-C", str(project), "show", v1("v1-local-gpu-mlflow.json")["run_id"]]) == 0
    out = capsys.readouterr().out
    assert "mlflow    http://127.0.0.1:5000/#/experiments/7/runs/" in out and "(sm_80)" in out
    assert cli(["runs", "-C", str(project), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {r["record_version"] for r in listed} == {6} and all(r["host"]["kernel"] for r in listed)


def test_a_record_of_the_wrong_shape_exits_21_without_a_traceback(
    write_project: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    project = write_project('[project]\nname = "demo"\ndependencies = []\n')
    store = _into_project(project, "v1-local-gpu-mlflow.json", "v1-local-cpu.json")
    bad = v1("v1-local-gpu-mlflow.json")
    (store.directory(bad["run_id"]) / "record.json").write_text(json.dumps(_set(bad, "host.gpus", "A100")))
    capsys.readouterr()
    assert cli(["runs", "-C", str(project), "show", bad["run_id"]]) == 21
    err = capsys.readouterr().err
    assert "host.gpus: must be a list of tables" in err and "Traceback" not in err
    assert cli(["runs", "-C", str(project)]) == 0
    out, err = capsys.readouterr()
    assert v1("v1-local-cpu.json")["run_id"] in out and bad["run_id"] not in out and "skipped" in err


def test_a_queued_records_mlflow_request_keeps_no_credentials_and_reads_back(
    write_project: Callable[[str], Path],
) -> None:
    project = locked_project(write_project, '"numpy"', [package("numpy", "2.1.3")])
    lock_path = project / "envlock.lock"
    secret_uri = "https://me:s3cret@mlflow.example.com"
    record = submit_run(
        LockedImage(lockfile.read(lock_path), lock_path.read_text(encoding="utf-8"), "linux/amd64", IMAGE),
        Submission(RunRequest(command=["t"]), (), "envlock-demo", TrackingSettings(secret_uri, "demo", "r1")),
        project_dir=project,
        store=RunStore(project),
        slurm=Slurm(FakeSlurm()),
        task=lambda run_id: ["envlock", "run-submitted", run_id],
    )
    text = (RunStore(project).directory(record.run_id) / "record.json").read_text(encoding="utf-8")
    assert "s3cret" not in text and json.loads(text)["scheduler"]["request"]["mlflow"]["experiment"] == "demo"
    read = RunStore(project).load(record.run_id)
    assert read == record and read.scheduler is not None and read.scheduler.request.mlflow is not None
    assert submitted_tracking(read, {"MLFLOW_TRACKING_URI": secret_uri}) == TrackingSettings(secret_uri, "demo", "r1")


def test_a_version_4_record_reads_without_lineage_and_writes_back_as_version_6() -> None:
    data = json.loads((RECORDS / "v4-local-inputs.json").read_text(encoding="utf-8"))
    record = RunRecord.from_dict(data)
    assert record.inputs is not None and record.inputs.files == {"data/clean.csv": "a" * 64}
    assert (record.links, record.tainted, record.params, record.chain) == ((), {}, None, None)
    written = json.loads(json.dumps(record.as_dict()))
    lineage: dict[str, Any] = {"links": [], "tainted": {}, "params": None, "chain": None, "package_versions": {}}
    assert written == {**data, **lineage, "record_version": 6}
    assert RunRecord.from_dict(written) == record


def test_version_5_lineage_parts_are_checked_on_read() -> None:
    data = json.loads((RECORDS / "v4-local-inputs.json").read_text(encoding="utf-8")) | {"record_version": 5}
    link = {"input": "data/clean.csv", "sha256": "a" * 64, "run": "20261126T075012Z-3f9a1c", "output": "clean.csv"}
    good = RunRecord.from_dict(data | {"links": [link], "tainted": {"data/clean.csv": "changed"}})
    assert good.links[0].run == "20261126T075012Z-3f9a1c" and good.tainted == {"data/clean.csv": "changed"}
    bad = {"links": [link | {"run": "../../x", "output": "/etc/passwd"}], "tainted": {"a": "edited"}, "chain": "x"}
    with pytest.raises(RunRecordError) as refused:
        RunRecord.from_dict(data | bad)
    problems = [refused.value.message, *refused.value.details]
    assert any("links[0].run: must be a string like" in p for p in problems), problems
    assert any("links[0].output: '/etc/passwd' must be a path inside the project" in p for p in problems), problems
    assert any("tainted: 'edited' must be one of changed, missing, added" in p for p in problems), problems
    assert any("chain: must be a string like" in p for p in problems), problems
