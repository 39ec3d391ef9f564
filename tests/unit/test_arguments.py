"""What a command-line argument names (envlock.run.arguments): one kind per rule, every ambiguity refused in one
line, and the same argument resolved the same way by every command that takes it."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from envlock.engine.docker import Engine
from envlock.errors import EnvlockError, RunNotFoundError, UsageError
from envlock.run.arguments import (
    BundleRef,
    DigestRef,
    FileRef,
    ImageRef,
    LockRef,
    Ref,
    RunRef,
    resolve,
    resolve_run,
)
from envlock.run.records import RunStore
from tests.unit import test_cli_commands
from tests.unit.test_cli_commands import World

world = test_cli_commands.world
DIGEST = "127.0.0.1:5000/team/demo@sha256:" + "a" * 64


def _no_engine() -> Engine:
    raise AssertionError("the engine is asked only when no other rule matched")


def _tar(path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("bundle.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    return path


def _runs(world: World, capsys: pytest.CaptureFixture[str], count: int) -> list[str]:
    for _ in range(count):
        assert world(capsys, "run", "-C", str(world.project), "--", "true")[0] == 0
    return [record.run_id for record in RunStore(world.project).all()]


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory outside the project (relative paths are looked for here first)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


# --- one test per kind -------------------------------------------------------------------------------------------


def test_a_registry_digest(world: World) -> None:
    found = resolve(DIGEST, (DigestRef, RunRef), RunStore(world.project), _no_engine)
    assert found == DigestRef(DIGEST)
    assert (found.name, found.digest) == ("127.0.0.1:5000/team/demo", "sha256:" + "a" * 64)


def test_a_bundle_by_its_name_or_by_its_first_block(world: World, elsewhere: Path) -> None:
    store = RunStore(world.project)
    named = _tar(elsewhere / "run.tar")
    unnamed = _tar(elsewhere / "evidence.bin")
    assert resolve("run.tar", (BundleRef, RunRef), store) == BundleRef("run.tar", Path("run.tar"))
    assert resolve(str(unnamed), (BundleRef, FileRef, RunRef), store) == BundleRef(str(unnamed), unnamed)
    # A command that takes no bundle sees the same tar as a file (lineage of a run's model.tar).
    assert resolve(str(named), (FileRef, RunRef), store) == FileRef(str(named), named)


def test_a_lock_file_or_its_folder_relative_to_the_working_directory_then_the_project(
    world: World, elsewhere: Path
) -> None:
    store = RunStore(world.project)
    lock = world.project / "envlock.lock"
    assert resolve(str(lock), (LockRef, RunRef), store) == LockRef(str(lock), lock)
    assert resolve(str(world.project), (LockRef, RunRef), store) == LockRef(str(world.project), lock)
    assert resolve("envlock.lock", (LockRef, RunRef), store) == LockRef("envlock.lock", lock)  # under -C
    (elsewhere / "envlock.lock").write_text("here")
    assert resolve("envlock.lock", (LockRef, RunRef), store) == LockRef("envlock.lock", Path("envlock.lock"))


def test_a_file(world: World, elsewhere: Path) -> None:
    (elsewhere / "statement.json").write_text("{}")
    found = resolve("statement.json", (BundleRef, FileRef, RunRef), RunStore(world.project), _no_engine)
    assert found == FileRef("statement.json", Path("statement.json"))


def test_a_run_by_a_unique_prefix(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    (run_id,) = _runs(world, capsys, 1)
    found = resolve(run_id[:18], (LockRef, RunRef, ImageRef), RunStore(world.project), _no_engine)
    assert isinstance(found, RunRef) and (found.text, found.run_id, found.record.run_id) == (
        run_id[:18],
        run_id,
        run_id,
    )
    assert resolve_run(run_id, RunStore(world.project)).run_id == run_id


def test_a_local_image_by_name_or_id(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    _runs(world, capsys, 1)
    record = RunStore(world.project).all()[-1]
    store = RunStore(world.project)
    by_name = resolve(record.image_reference, (LockRef, RunRef, ImageRef), store, lambda: world.engine)
    assert by_name == ImageRef(record.image_reference, record.image_id)
    assert resolve(record.image_id, (RunRef, ImageRef), store, lambda: world.engine).kind == "image"


# --- one test per ambiguity and per unknown ----------------------------------------------------------------------


def test_a_path_that_is_also_a_run_is_refused_and_dot_slash_picks_the_path(
    world: World, capsys: pytest.CaptureFixture[str], elsewhere: Path
) -> None:
    (run_id,) = _runs(world, capsys, 1)
    (elsewhere / run_id[:8]).write_text("a lock by an unlucky name")
    with pytest.raises(UsageError) as refused:
        resolve(run_id[:8], (LockRef, RunRef), RunStore(world.project))
    assert (refused.value.exit_code, refused.value.message, refused.value.hint) == (
        2,
        f"{run_id[:8]!r} is ambiguous: it names the path {run_id[:8]} and a run of this project",
        f"write ./{run_id[:8]} for the path, or more of the run id",
    )
    assert resolve(f"./{run_id[:8]}", (LockRef, RunRef), RunStore(world.project)).kind == "lock"
    assert resolve(run_id, (LockRef, RunRef), RunStore(world.project)).kind == "run"  # no such path: the run
    assert resolve(run_id[:8], (RunRef,), RunStore(world.project)).kind == "run"  # paths not taken: no ambiguity


def test_a_path_that_is_also_a_digest_is_refused(world: World, elsewhere: Path) -> None:
    name = "demo@sha256:" + "b" * 64
    _tar(elsewhere / name)
    with pytest.raises(UsageError) as refused:
        resolve(name, (BundleRef, DigestRef, RunRef), RunStore(world.project))
    assert refused.value.message == f"{name!r} is ambiguous: it names the path {name} and a registry digest"
    assert refused.value.hint == f"write ./{name} for the path"
    assert resolve(f"./{name}", (BundleRef, DigestRef, RunRef), RunStore(world.project)).kind == "bundle"


def test_a_prefix_of_several_runs_is_refused_with_exit_13(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    ids = _runs(world, capsys, 2)
    common = ids[0][:8]
    with pytest.raises(RunNotFoundError) as refused:
        resolve(common, (LockRef, RunRef, ImageRef), RunStore(world.project), _no_engine)
    assert refused.value.exit_code == 13
    assert refused.value.message == f"{common!r} matches several runs ({ids[0]}, {ids[1]})"


@pytest.mark.parametrize(
    ("text", "accepts", "error", "message"),
    [
        ("nope", (RunRef,), RunNotFoundError, "'nope' is not a run of this project"),
        ("20990101T", (LockRef, RunRef), RunNotFoundError, "'20990101T' is not a lock file or a run of this project"),
        ("nope", (DigestRef, LockRef, RunRef), UsageError,
         "'nope' is not a registry digest, a lock file or a run of this project"),
        ("repo@sha256:abc", (DigestRef,), UsageError, "'repo@sha256:abc' is not a registry digest"),
        ("", (FileRef, RunRef), UsageError, "'' is not a file or a run of this project"),
    ],
)  # fmt: skip
def test_what_names_nothing_is_one_line_naming_what_the_command_takes(
    world: World,
    elsewhere: Path,
    text: str,
    accepts: tuple[type[Ref], ...],
    error: type[EnvlockError],
    message: str,
) -> None:
    with pytest.raises(error) as refused:
        resolve(text, accepts, RunStore(world.project))
    assert type(refused.value) is error and refused.value.message == message and refused.value.hint.startswith("pass ")


def test_an_unknown_image_asks_the_engine_once_and_is_a_usage_error(world: World) -> None:
    asked: list[str] = []

    def engine() -> Engine:
        asked.append("engine")
        return world.engine

    with pytest.raises(UsageError) as refused:
        resolve("demo:nothing", (LockRef, RunRef, ImageRef), RunStore(world.project), engine)
    assert asked == ["engine"]
    assert refused.value.message == "'demo:nothing' is not a lock file, a run of this project or a local image"


# --- the same argument, every command ---------------------------------------------------------------------------


def test_every_command_resolves_a_run_prefix_to_the_same_run(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    (run_id,) = _runs(world, capsys, 1)
    prefix, project = run_id[:18], str(world.project)
    # First: `reproduce` below makes a run of its own, often in the same second, whose id may share the prefix.
    code, out, _ = world(capsys, "runs", "wait", prefix, "-C", project)
    assert code == 0 and out == f"run {run_id}: finished (exit 0)\n"
    checks = {
        ("runs", "show", prefix, "-C", project): f"run       {run_id}",
        ("lineage", prefix, "-C", project): run_id,
        ("report", prefix, "-C", project): run_id,
        ("verify", prefix, "-C", project, "--allow-unsigned"): "HASHES HOLD",
        ("diff", prefix, run_id, "-C", project): f"run {prefix} -> run {run_id}",
        ("archive", prefix, "-C", project): "verified",
        ("restore", prefix, "-C", project, "--no-rebuild"): "restored sha256:",
        ("reproduce", prefix, "-C", project): "REPRODUCED",
    }
    for argv, expected in checks.items():
        code, out, err = world(capsys, *argv)
        assert code == 0 and expected in out, (argv, out, err)


def test_every_command_that_takes_paths_and_runs_refuses_the_same_ambiguity_the_same_way(
    world: World, capsys: pytest.CaptureFixture[str], elsewhere: Path
) -> None:
    (run_id,) = _runs(world, capsys, 1)
    prefix, project = run_id[:8], str(world.project)
    (elsewhere / prefix).write_text("{}")
    refusal = f"error: {prefix!r} is ambiguous: it names the path {prefix} and a run of this project"
    for argv in (
        ("diff", prefix, run_id, "-C", project),
        ("restore", prefix, "-C", project),
        ("verify", prefix, "-C", project),
        ("lineage", prefix, "-C", project),
        ("report", "--chain", prefix, "-C", project),
        ("reproduce", "--chain", prefix, "-C", project),
    ):
        code, out, err = world(capsys, *argv)
        assert (code, out, err.splitlines()[0]) == (2, "", refusal), argv
    for argv in (("runs", "show", prefix, "-C", project), ("attest", prefix, "-C", project)):  # runs only
        assert world(capsys, *argv)[0] == 0, argv
    # reproduce takes bundles, not other files: the plain file is no bundle, so the text is the run
    code, out, _ = world(capsys, "reproduce", prefix, "-C", project)
    assert code == 0 and "REPRODUCED" in out
