"""`envlock reproduce` through fakes: what the run saw comes back (untracked code, inputs, environment names), and
a verdict claims only what was compared (REPRODUCED 0, NOT REPRODUCED 16, NOTHING COMPARED 24, FAILURE
REPRODUCED 25)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from envlock.engine.launch import CONTAINER_HOME, CONTAINER_USER
from envlock.errors import EXIT_CODES, SpecError
from envlock.lock import lockfile
from envlock.lock.lockdiff import LockDiff
from envlock.lock.spec import load_spec
from envlock.run.inputs import StatCache, hash_inputs
from envlock.run.records import RunRecord, RunStore
from envlock.run.reproduce import Verdict, rerun_request
from envlock.run.rundiff import RunDiff
from envlock.run.runner import RunRequest, hash_outputs
from tests.fakes import TORCH_251_AMD64, FakeLauncher, cpu_host
from tests.unit.test_cli_commands import METRICS, World, world
from tests.unit.test_runner import locked_project, run

__all__ = ["world"]  # the fixture, shared with test_cli_commands


def git(project: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True
    )


def committed(world: World, ignore: str = "out/\n.envlock/\ndata/\n") -> Path:
    """The world's project as a git repository with everything committed (outputs, state and data ignored)."""
    project = world.project
    (project / ".gitignore").write_text(ignore)
    (project / "train.py").write_text("print('train')\n")
    git(project, "init", "-q")
    git(project, "add", ".")
    git(project, "commit", "-qm", "start")
    return project


def last(world: World) -> RunRecord:
    """The only run, or the only one not made by reproduce (ids in the same second do not sort by time)."""
    (first,) = [r for r in RunStore(world.project).all() if r.reproduces is None]
    return first


def new_run(out: str) -> str:
    """The run a verdict names as the re-run."""
    match = re.search(r"run (\S+) re-ran", out)
    assert match, out
    return match.group(1)


def test_untracked_code_is_saved_and_restored_by_reproduce(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    project = committed(world)
    (project / "helper.py").write_text("SCALE = 3\n")
    world.launcher.reads = ("helper.py",)
    code, _, said = world(capsys, "run", "-C", str(project), "-o", "out/metrics.json", "--", "python", "train.py")
    assert code == 0, said
    original = last(world)
    assert original.git is not None and dict(original.git.saved).keys() == {"helper.py"}
    digest = original.git.saved["helper.py"]
    assert (project / ".envlock" / "objects" / "sha256" / digest[:2] / digest).read_bytes() == b"SCALE = 3\n"

    (project / "helper.py").unlink()  # git clean: the helper is gone from the working tree
    code, out, said = world(capsys, "reproduce", original.run_id, "-C", str(project))
    assert code == 0 and out.startswith("REPRODUCED"), out + said
    assert world.launcher.seen[-1]["helper.py"] == b"SCALE = 3\n", "the re-run saw the helper"
    assert "code (commit" in out and "1 untracked file" in out and "changed: nothing" in out
    assert "not compared: inputs: none declared" in out, "what was not compared is named"
    new = new_run(out)
    assert (RunStore(project).directory(new) / "outputs" / "out" / "metrics.json").read_bytes() == METRICS
    code, shown, _ = world(capsys, "runs", "-C", str(project), "show", new)
    assert f"reproduces {original.run_id}" in shown and "verdict   REPRODUCED" in shown
    assert json.loads((RunStore(project).directory(new) / "verdict.json").read_text())["exit_code"] == 0


def test_a_missing_saved_copy_is_a_rerun_error(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    project = committed(world)
    (project / "helper.py").write_text("SCALE = 3\n")
    world(capsys, "run", "-C", str(project), "--", "python", "train.py")
    original = last(world)
    assert original.git is not None
    digest = original.git.saved["helper.py"]
    (project / ".envlock" / "objects" / "sha256" / digest[:2] / digest).unlink()
    code, _, err = world(capsys, "reproduce", original.run_id, "-C", str(project))
    assert code == 23 and "untracked file helper.py cannot be restored" in err


def test_untracked_over_the_cap_is_named_everywhere(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    project = committed(world)
    (project / "pyproject.toml").write_text((project / "pyproject.toml").read_text() + "\n[tool.envlock]\n")
    text = (project / "pyproject.toml").read_text() + "untracked-max-bytes = 16\n"
    (project / "pyproject.toml").write_text(text)
    git(project, "commit", "-qam", "cap")
    (project / "small.py").write_text("A = 1\n")
    (project / "weights.bin").write_bytes(b"x" * 100)
    code, _, said = world(capsys, "run", "-C", str(project), "--", "python", "train.py")
    assert (
        code == 0 and "untracked weights.bin not saved with the run (100 bytes, over untracked-max-bytes (16))" in said
    )
    original = last(world)
    assert original.git is not None and original.git.unsaved == ("weights.bin",)
    code, shown, _ = world(capsys, "runs", "-C", str(project), "show", original.run_id)
    assert "2 untracked: 1 saved, 1 not" in shown and "untracked weights.bin  NOT saved: 100 bytes" in shown
    code, out, _ = world(capsys, "reproduce", original.run_id, "-C", str(project))
    assert "not compared: untracked weights.bin: 100 bytes, over untracked-max-bytes" in out


def test_inputs_are_hashed_mounted_read_only_and_checked(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    project = committed(world)
    (project / "data").mkdir()
    (project / "data" / "train.csv").write_text("x,y\n1,2\n")
    (project / "data" / "labels.txt").write_text("a\n")
    world.launcher.reads = ("data/train.csv",)
    code, _, said = world(capsys, "run", "-C", str(project), "-i", "data/", "--", "python", "train.py")
    assert code == 0, said
    original = last(world)
    assert original.inputs is not None and sorted(original.inputs.files) == ["data/labels.txt", "data/train.csv"]
    assert world.launcher.launched[-1].read_only == ((project / "data", "/work/data"),)

    code, out, _ = world(capsys, "reproduce", original.run_id, "-C", str(project))
    assert code == 0 and "inputs (2 files)" in out, out
    spec = world.launcher.launched[-1]
    assert spec.project_dir != project and spec.read_only == ((project.resolve() / "data", "/work/data"),)
    assert world.launcher.seen[-1]["data/train.csv"] == b"x,y\n1,2\n", "the re-run reads the project's data"

    (project / "data" / "train.csv").write_text("x,y\n1,3\n")
    code, out, _ = world(capsys, "reproduce", original.run_id, "-C", str(project))
    assert code == 16 and out.startswith("NOT REPRODUCED") and "changed: input data/train.csv: changed" in out
    code, out, _ = world(capsys, "diff", original.run_id, new_run(out), "-C", str(project))
    assert "input data/train.csv: changed" in out and "labels" not in out


def test_a_missing_input_is_refused_by_run(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = world(capsys, "run", "-C", str(world.project), "--input", "data/nope.csv", "--", "true")
    assert code == 125 and "input 'data/nope.csv' does not exist" in err and world.launcher.launched == []
    code, _, err = world(capsys, "run", "-C", str(world.project), "--input", "../outside", "--", "true")
    assert code == 125 and "must be a path inside the project" in err


def test_a_failed_run_is_never_reproduced(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.launcher.code = 3
    world(capsys, "run", "-C", str(world.project), "-o", "out/none.json", "--", "python", "train.py")
    original = last(world)
    assert original.exit_code == 3 and original.outputs == {"out/none.json": None} and original.log_sha256
    code, out, _ = world(capsys, "reproduce", original.run_id, "-C", str(world.project))
    assert code == 25 and out.startswith("FAILURE REPRODUCED") and "log (no output to compare): identical" in out
    assert "output out/none.json: not produced" in out
    world.launcher.code = 0
    code, out, _ = world(capsys, "reproduce", original.run_id, "-C", str(world.project))
    assert code == 16 and out.startswith("NOT REPRODUCED") and "exit code: 3 -> 0" in out


def test_without_outputs_the_log_is_compared_and_without_either_nothing_is(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world(capsys, "run", "-C", str(world.project), "--", "python", "train.py")
    original = last(world)
    code, out, _ = world(capsys, "reproduce", original.run_id, "-C", str(world.project))
    assert code == 0 and "log (no output to compare): identical" in out
    new = RunStore(world.project).load(new_run(out))
    nothing = Verdict(
        replace(original, log_sha256=None), replace(new, log_sha256=None), (), RunDiff(LockDiff(), {}, {})
    )
    assert (nothing.outcome, nothing.exit_code) == ("NOTHING COMPARED", 24)
    assert {16, 23, 24, 25} <= EXIT_CODES.keys()


def test_a_dirty_run_reproduces_from_the_project_directory_without_c(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = committed(world)
    (project / "train.py").write_text("print('changed')\n")
    world.launcher.reads = ("train.py",)
    monkeypatch.chdir(project)
    world(capsys, "run", "-o", "out/metrics.json", "--", "python", "train.py")
    original = last(world)
    assert original.git is not None and original.git.dirty and original.git.diff_sha256
    git(project, "checkout", "--", "train.py")
    code, out, err = world(capsys, "reproduce", original.run_id)
    assert code == 0 and out.startswith("REPRODUCED"), out + err
    assert world.launcher.seen[-1]["train.py"] == b"print('changed')\n" and "+ diff" in out


def test_environment_names_are_passed_again_or_named(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.wiring.environ = {"WANDB_API_KEY": "k1"}
    world(capsys, "run", "-C", str(world.project), "-e", "WANDB_API_KEY", "--", "true")
    original = last(world)
    world.wiring.environ = {"WANDB_API_KEY": "k2"}
    code, out, _ = world(capsys, "reproduce", original.run_id, "-C", str(world.project))
    assert code == 0 and world.launcher.launched[-1].environment["WANDB_API_KEY"] == "k2"
    assert "environment names (WANDB_API_KEY)" in out
    world.wiring.environ = {}
    code, out, _ = world(capsys, "reproduce", original.run_id, "-C", str(world.project))
    assert "not compared: environment WANDB_API_KEY: not passed (not set here, or not named with --env)" in out


def test_home_is_writable_for_any_uid(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world(capsys, "run", "-C", str(world.project), "--", "true")
    environment = world.launcher.launched[-1].environment
    assert environment["HOME"] == CONTAINER_HOME and environment["XDG_CACHE_HOME"] == f"{CONTAINER_HOME}/.cache"
    assert environment["USER"] == environment["LOGNAME"] == CONTAINER_USER, "getpass.getuser() for any uid"


def test_no_gpus_on_a_cuda_lock_needs_no_force_and_reproduce_keeps_the_mode(
    write_project: Callable[[str], Path],
) -> None:
    project = locked_project(write_project, '"torch==2.5.1"', TORCH_251_AMD64)
    launcher = FakeLauncher()
    record = run(project, launcher, cpu_host(), RunRequest(command=["python", "train.py"], gpus=False))
    assert record.status == "finished" and not record.forced and record.gpus is False
    assert not launcher.launched[-1].gpus
    assert any("--no-gpus" in note and "driver >= 550.54.14" in note for note in record.preflight)
    again = rerun_request(record, force=False)
    assert again.gpus is False and not again.force
    forced = rerun_request(replace(record, forced=True, gpus=None), force=False)
    assert forced.force and forced.gpus is None


def test_reproduce_of_a_no_gpus_cuda_run_runs_on_a_cpu_host(write_project: Callable[[str], Path]) -> None:
    project = locked_project(write_project, '"torch==2.5.1"', TORCH_251_AMD64)
    record = run(project, FakeLauncher(), cpu_host(), RunRequest(command=["python", "train.py"], gpus=False))
    again = run(project, FakeLauncher(), cpu_host(), rerun_request(record, force=False))
    assert again.status == "finished" and again.gpus is False


def test_directory_outputs_count_only_files_written_during_the_run(tmp_path: Path) -> None:
    (tmp_path / "mlruns" / "0").mkdir(parents=True)
    old = tmp_path / "mlruns" / "0" / "old.yaml"
    old.write_text("earlier run")
    os.utime(old, ns=(10**18, 10**18))
    new = tmp_path / "mlruns" / "0" / "new.yaml"
    new.write_text("this run")
    since = new.stat().st_mtime_ns - 1
    assert list(hash_outputs(tmp_path, ("mlruns",), since)) == ["mlruns/0/new.yaml"]
    assert len(hash_outputs(tmp_path, ("mlruns",))) == 2


def test_the_stat_cache_reads_an_unchanged_file_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(b"a" * 1000)
    cache_path = tmp_path / "stats.json"
    first = hash_inputs(tmp_path, ("data",), StatCache(cache_path, racy_ns=0))
    entries = json.loads(cache_path.read_text())
    (key,) = entries
    entries[key][4] = "0" * 64  # what the cache says is believed while the stat is the same
    cache_path.write_text(json.dumps(entries))
    assert hash_inputs(tmp_path, ("data",), StatCache(cache_path, racy_ns=0)).files == {"data/a.bin": "0" * 64}
    (data / "a.bin").write_bytes(b"b" * 1000)  # same size, new mtime/ctime: read again
    second = hash_inputs(tmp_path, ("data",), StatCache(cache_path, racy_ns=0))
    assert second.files["data/a.bin"] != first.files["data/a.bin"] != "0" * 64
    assert first.changes(second) == {"data/a.bin": "changed"} and first.digest != second.digest
    racy = tmp_path / "racy.json"
    hash_inputs(tmp_path, ("data",), StatCache(racy))
    assert not racy.exists(), "a file written a moment ago is not cached"


def test_spec_inputs_and_the_cap_are_validated_and_leave_the_lock_fresh(
    write_project: Callable[[str], Path],
) -> None:
    base = '[project]\nname = "demo"\ndependencies = ["numpy"]\n'
    plain = load_spec(write_project(base))
    spec = load_spec(write_project(base + '[tool.envlock]\ninputs = ["data/"]\nuntracked-max-bytes = 10\n'))
    assert spec.run_inputs == ("data",) and spec.untracked_max_bytes == 10
    assert spec.input_hash() == plain.input_hash(), "inputs never make the lock stale"
    with pytest.raises(SpecError) as refused:
        load_spec(write_project(base + '[tool.envlock]\ninputs = ["/data"]\nuntracked-max-bytes = -1\n'))
    assert len(refused.value.details) == 2


def test_runs_show_says_no_diff_when_only_untracked_files_made_it_dirty(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    project = committed(world)
    (project / "helper.py").write_text("A = 1\n")
    world(capsys, "run", "-C", str(project), "--", "true")
    _, shown, _ = world(capsys, "runs", "-C", str(project), "show", last(world).run_id)
    assert "diff.patch" not in shown and "1 untracked: 1 saved, 0 not" in shown
    assert lockfile.read(project / "envlock.lock")
