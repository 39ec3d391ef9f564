"""`envlock run` through fakes: preflight refusal with numbers, --force recorded, records always whole."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from envlock.cli.app import run as cli
from envlock.errors import PreflightError
from envlock.image.catalog import PinnedImage
from envlock.lock import lockfile
from envlock.lock.project import lock_project
from envlock.lock.resolve import LockedPackage
from envlock.lock.spec import load_spec
from envlock.run.gitstate import GitState, git_state
from envlock.run.hostprobe import HostState
from envlock.run.records import RunRecord, RunStore
from envlock.run.rundiff import diff_runs
from envlock.run.runner import LockedImage, RunContext, RunFolders, RunRequest, run_in_image
from tests.fakes import (
    A100,
    RTX_4090,
    TORCH_251_AMD64,
    FakeEvidence,
    FakeLauncher,
    FakeResolver,
    cpu_host,
    gpu_host,
    package,
)

IMAGE = PinnedImage("sha256:" + "e" * 64, "demo:0123456789ab", ("127.0.0.1:5000/team/demo@sha256:" + "f" * 64,))


def locked_project(write_project: Callable[[str], Path], dependencies: str, packages: Sequence[LockedPackage]) -> Path:
    project = write_project(f'[project]\nname = "demo"\ndependencies = [{dependencies}]\n')
    lock_project(load_spec(project), FakeResolver({"linux/amd64": packages}))
    return project


def run(
    project: Path,
    launcher: FakeLauncher,
    host: HostState,
    request: RunRequest,
    seen: list[tuple[str, bytes]] | None = None,
) -> RunRecord:
    return run_in_image(
        context(project, host, GitState(commit="abc123", dirty=True, diff=b"diff --git a/train.py b/train.py\n")),
        request,
        launcher=launcher,
        evidence=FakeEvidence(),
        output=lambda stream, data: (seen if seen is not None else []).append((stream, data)),
    )


def context(project: Path, host: HostState, git: GitState, store: RunStore | None = None) -> RunContext:
    """A linux/amd64 run of the project's lock in IMAGE, on `host`, recorded in `store` (default: the project's)."""
    lock_path = project / "envlock.lock"
    locked = LockedImage(lockfile.read(lock_path), lock_path.read_text(encoding="utf-8"), "linux/amd64", IMAGE)
    return RunContext(locked=locked, host=host, git=git, folders=RunFolders(project, store or RunStore(project)))


def test_cpu_run_is_recorded_whole(write_project: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    project = locked_project(write_project, '"numpy"', [package("numpy", "2.1.3")])
    monkeypatch.setenv("WANDB_API_KEY", "s3cr3t-value")
    seen: list[tuple[str, bytes]] = []
    launcher = FakeLauncher(writes={"out/metrics.json": b'{"accuracy": 0.97}\n'})
    record = run(
        project,
        launcher,
        cpu_host(),
        RunRequest(command=["python", "train.py"], seed=7, outputs=("out",), pass_env=("WANDB_API_KEY",)),
        seen,
    )
    assert (record.status, record.exit_code) == ("finished", 0)
    assert seen == [("stdout", b"training...\n"), ("stderr", b"a warning\n")], "streamed live"
    spec = launcher.launched[0]
    assert spec.image_id == IMAGE.image_id and spec.command == ["python", "train.py"] and not spec.gpus
    assert spec.environment["PYTHONHASHSEED"] == "7" and spec.environment["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert spec.environment["WANDB_API_KEY"] == "s3cr3t-value"
    store = RunStore(project)
    text = (store.directory(record.run_id) / "record.json").read_text(encoding="utf-8")
    assert "s3cr3t-value" not in text and json.loads(text)["passed_env"] == ["WANDB_API_KEY"]
    assert record.outputs == {"out/metrics.json": hashlib.sha256(b'{"accuracy": 0.97}\n').hexdigest()}
    assert store.log_path(record.run_id).read_bytes() == b"training...\na warning\n"
    assert (store.directory(record.run_id) / "envlock.lock").read_text() == (project / "envlock.lock").read_text()
    assert (store.directory(record.run_id) / "diff.patch").read_bytes().startswith(b"diff --git")
    assert record.repo_digests == list(IMAGE.repo_digests)
    assert record.host is not None and record.host.driver_version is None
    assert store.load(record.run_id[:12]) == record


def test_old_driver_is_refused_with_numbers_then_forced(write_project: Callable[[str], Path]) -> None:
    project = locked_project(write_project, '"torch==2.5.1"', TORCH_251_AMD64)
    old = gpu_host("470.82.01", A100, cuda=11040)
    with pytest.raises(PreflightError) as refused:
        run(project, FakeLauncher(), old, RunRequest(command=["python", "train.py"]))
    assert "470.82.01" in refused.value.message and "525.60.13" in refused.value.message
    assert RunStore(project).all() == [], "a refused run leaves no record"
    launcher = FakeLauncher()
    record = run(project, launcher, old, RunRequest(command=["python", "train.py"], force=True))
    assert record.forced and any(note.startswith("forced: ") and "470.82.01" in note for note in record.preflight)
    assert launcher.launched[0].gpus, "a GPU host with a CUDA lock gets its GPUs"


def test_new_driver_runs_with_gpus(write_project: Callable[[str], Path]) -> None:
    project = locked_project(write_project, '"torch==2.5.1"', TORCH_251_AMD64)
    launcher = FakeLauncher(code=3)
    record = run(project, launcher, gpu_host("550.54.15", A100), RunRequest(command=["python", "train.py"]))
    assert (record.status, record.exit_code, record.forced) == ("failed", 3, False)
    assert record.host is not None and record.host.gpus[0].name == "NVIDIA A100-SXM4-80GB"


def test_ctrl_c_marks_the_record_interrupted(write_project: Callable[[str], Path]) -> None:
    project = locked_project(write_project, '"numpy"', [package("numpy", "2.1.3")])
    with pytest.raises(KeyboardInterrupt):
        run(project, FakeLauncher(interrupt=True), cpu_host(), RunRequest(command=["python", "train.py"]))
    (record,) = RunStore(project).all()
    assert (record.status, record.exit_code) == ("interrupted", 130)


def test_a_killed_envlock_is_settled_by_the_next_command(write_project: Callable[[str], Path]) -> None:
    project = locked_project(write_project, '"numpy"', [package("numpy", "2.1.3")])
    record = run(project, FakeLauncher(), cpu_host(), RunRequest(command=["true"]))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    store = RunStore(project)
    store.save(replace(record, status="running", ended=None, exit_code=None, envlock_pid=int(dead.stdout)))
    launcher = FakeLauncher()
    (settled,) = store.settle_orphans(launcher.remove)
    assert settled.status == "interrupted" and launcher.removed == [record.container]
    assert store.load(record.run_id).status == "interrupted"


def test_git_state_of_a_real_repository(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    assert git_state(tmp_path).commit is None
    git("init", "-q")
    (tmp_path / "train.py").write_text("print(1)\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    clean = git_state(tmp_path, outputs=("out",))
    assert clean.commit and not clean.dirty
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.json").write_text("{}")
    assert not git_state(tmp_path, outputs=("out",)).dirty, "outputs are not code"
    (tmp_path / "train.py").write_text("print(2)\n")
    dirty = git_state(tmp_path, outputs=("out",))
    assert dirty.dirty and b"print(2)" in dirty.diff and dirty.diff_sha256


def test_diff_of_two_runs_names_each_factor_that_moved(write_project: Callable[[str], Path]) -> None:
    project = locked_project(write_project, '"torch==2.5.1"', TORCH_251_AMD64)
    first = run(
        project,
        FakeLauncher(writes={"out/m.json": b"1"}),
        gpu_host("550.54.15", A100),
        RunRequest(command=["t"], outputs=("out",)),
    )
    second = run(
        project,
        FakeLauncher(writes={"out/m.json": b"2"}),
        gpu_host("560.35.03", A100),
        RunRequest(command=["t"], seed=1, outputs=("out",)),
    )
    lock = lockfile.read(project / "envlock.lock")
    changes = diff_runs(first, second, lock, lock)
    assert set(changes.factors) == {"driver", "seed"}
    assert changes.factors["driver"] == ("550.54.15", "560.35.03")
    assert list(changes.outputs) == ["out/m.json"]
    assert "output out/m.json: " in "\n".join(changes.lines())
    assert not diff_runs(first, first, lock, lock), "a run does not differ from itself"
    other_gpu = run(project, FakeLauncher(), gpu_host("550.54.15", RTX_4090), RunRequest(command=["t"]))
    assert diff_runs(first, other_gpu, lock, lock).factors["gpus"] == (
        ["NVIDIA A100-SXM4-80GB (sm_80)"],
        ["NVIDIA GeForce RTX 4090 (sm_89)"],
    )


def test_runs_show_names_the_gpus_with_their_architecture(
    write_project: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    project = locked_project(write_project, '"torch==2.5.1"', TORCH_251_AMD64)
    record = run(project, FakeLauncher(), gpu_host("550.54.15", A100, A100), RunRequest(command=["t"]))
    assert cli(["runs", "-C", str(project), "show", record.run_id]) == 0
    assert "GPUs NVIDIA A100-SXM4-80GB (sm_80), NVIDIA A100-SXM4-80GB (sm_80)" in capsys.readouterr().out


def test_a_damaged_record_is_named_not_a_traceback(
    write_project: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    project = locked_project(write_project, '"numpy"', [package("numpy", "2.1.3")])
    good = run(project, FakeLauncher(), cpu_host(), RunRequest(command=["true"]))
    bad = run(project, FakeLauncher(), cpu_host(), RunRequest(command=["true"]))
    (RunStore(project).directory(bad.run_id) / "record.json").write_text("{ not json")
    capsys.readouterr()
    assert cli(["runs", "-C", str(project)]) == 0
    out, err = capsys.readouterr()
    assert good.run_id in out and bad.run_id not in out and "skipped unreadable run record" in err
    assert cli(["runs", "-C", str(project), "show", bad.run_id]) == 21
    assert "is unreadable" in capsys.readouterr().err
