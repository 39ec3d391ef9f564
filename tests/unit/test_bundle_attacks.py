"""`envlock reproduce BUNDLE` with crafted bundles, one class of attack each: a real bundle made by `envlock bundle`,
unpacked, changed the way a hostile sender would, its run attested again (unsigned: the receiver passes
--allow-unsigned, so each test reaches the defence it is about) and its bundle.json hashes made to hold."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from envlock.evidence.attest import attest_run
from envlock.evidence.bundle import MANIFEST
from envlock.run.records import RunRecord, RunStore
from envlock.safetar import extract
from tests.unit import test_cli_commands
from tests.unit.test_audit import _git_init
from tests.unit.test_cli_commands import World

world = test_cli_commands.world

Edit = Callable[[Path], None]


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder of the receiver's that no bundle may touch, with a sentinel file in it."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "sentinel.txt").write_text("untouched\n")
    return folder


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under folder: a file's bytes, a link's target, a folder's name."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        found[name] = str(path.readlink()) if path.is_symlink() else path.read_bytes() if path.is_file() else "dir"
    return found


def _made(world: World, capsys: pytest.CaptureFixture[str], *run_args: str) -> tuple[Path, RunRecord]:
    """The sender's side: the project committed, a run, its bundle with the image."""
    _git_init(world.project)
    code, _, said = world(capsys, "run", "-C", str(world.project), "-o", "out/metrics.json", *run_args, "--", "t.py")
    assert code == 0, said
    record = RunStore(world.project).all()[-1]
    bundle = world.project.parent / "made.tar"
    code, _, err = world(capsys, "bundle", record.run_id, "-C", str(world.project), "-o", str(bundle), "--with-image")
    assert code == 0, err
    return bundle, record


def _crafted(bundle: Path, out: Path, edit: Edit) -> Path:
    """The bundle unpacked, edited, its run attested again (unsigned) and bundle.json's list made to hold."""
    root = unpacked(bundle, out.parent / f"{out.stem}-unpacked")
    edit(root)
    attest_run(root / "run", None)
    return packed(root, out)


def unpacked(bundle: Path, root: Path) -> Path:
    """The bundle unpacked into a new folder `root`, by envlock's own reader (Debian's 3.11.2 has no tar filters)."""
    root.mkdir()
    extract(bundle, root)
    return root


def packed(root: Path, out: Path) -> Path:
    """An unpacked bundle, edited, packed again with bundle.json's list made to hold (nothing re-attested here)."""
    manifest = json.loads((root / MANIFEST).read_text())
    files = sorted(p for p in root.rglob("*") if p.is_file() and p != root / MANIFEST)
    manifest["contents"] = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    (root / MANIFEST).write_text(json.dumps(manifest))
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as archive:
        for path in [root / MANIFEST, *files]:
            archive.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
    return out


def _record(root: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((root / "run" / "record.json").read_text())
    return loaded


def _edit_record(root: Path, change: Callable[[dict[str, object]], None]) -> None:
    record = _record(root)
    change(record)
    (root / "run" / "record.json").write_text(json.dumps(record, indent=2))


def _reproduce(world: World, capsys: pytest.CaptureFixture[str], bundle: Path, *args: str) -> tuple[int, str, str]:
    receiver = bundle.parent / "receiver"
    receiver.mkdir(exist_ok=True)
    return world(capsys, "reproduce", str(bundle), "-C", str(receiver), "--allow-unsigned", *args)


def _error_line(err: str) -> str:
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    return line


# --- git: no hook, no config-driven command ------------------------------------------------------------------------


def _hook(marker: Path) -> str:
    return f"#!/bin/sh\ntouch {marker}\n"


def test_a_git_hook_shipped_as_an_input_is_refused_before_anything_is_rebuilt(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path, outside: Path
) -> None:
    made, _ = _made(world, capsys)
    marker = outside / "hook-ran"

    def plant(root: Path) -> None:
        hook = root / "inputs" / ".git" / "hooks" / "post-checkout"
        hook.parent.mkdir(parents=True)
        hook.write_text(_hook(marker))
        hook.chmod(0o755)

    before = _snapshot(outside)
    code, _, err = _reproduce(world, capsys, _crafted(made, tmp_path / "hook.tar", plant))
    assert code == 31
    assert _error_line(err) == (
        "error: refused: inputs/.git/hooks/post-checkout in the bundle has a .git component (never written there)"
    )
    assert not marker.exists() and _snapshot(outside) == before
    assert list((tmp_path / "receiver").iterdir()) == [], "refused before any folder is made"


def test_a_git_config_with_fsmonitor_is_refused(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path, outside: Path
) -> None:
    made, _ = _made(world, capsys)
    marker = outside / "fsmonitor-ran"

    def plant(root: Path) -> None:
        config = root / "inputs" / ".git" / "config"
        config.parent.mkdir(parents=True)
        config.write_text(f"[core]\n\tfsmonitor = touch {marker}\n")

    before = _snapshot(outside)
    code, _, err = _reproduce(world, capsys, _crafted(made, tmp_path / "fsmonitor.tar", plant))
    assert code == 31
    assert _error_line(err) == (
        "error: refused: inputs/.git/config in the bundle has a .git component (never written there)"
    )
    assert not marker.exists() and _snapshot(outside) == before


def test_git_on_a_bundle_runs_no_hook_even_one_the_receiver_configured(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made, record = _made(world, capsys)
    marker = outside / "hook-ran"
    hooks = tmp_path / "receiver-hooks"
    hooks.mkdir()
    (hooks / "post-checkout").write_text(_hook(marker))
    (hooks / "post-checkout").chmod(0o755)
    config = tmp_path / "receiver.gitconfig"
    config.write_text(f"[core]\n\thooksPath = {hooks}\n\tfsmonitor = touch {marker}\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))

    code, out, err = _reproduce(world, capsys, _crafted(made, tmp_path / "clean.tar", lambda _root: None))
    assert code == 0 and out.startswith("REPRODUCED"), out + err
    assert not marker.exists(), "neither the checkout, the worktree nor git status ran the configured hook"
    # The same git, configured the same way, on the user's own repository does run it: the test can fail.
    assert record.git is not None and record.git.commit is not None
    subprocess.run(["git", "-C", str(world.project), "checkout", "-q", "--detach", record.git.commit], check=True)
    assert marker.exists()


# --- links: no write, no mount through a link out of the reproduction -----------------------------------------------


def _add_untracked(root: Path, name: str, data: bytes) -> None:
    digest = hashlib.sha256(data).hexdigest()
    saved = root / "objects" / "sha256" / digest[:2] / digest
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_bytes(data)

    def change(record: dict[str, object]) -> None:
        git = record["git"]
        assert isinstance(git, dict)
        git["untracked"] = [*git["untracked"], name]
        git["untracked-saved"] = {**git["untracked-saved"], name: digest}
        git["dirty"] = True

    _edit_record(root, change)


def test_an_untracked_file_saved_under_a_committed_link_out_is_refused(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path, outside: Path
) -> None:
    (world.project / "escape").symlink_to(outside)  # committed by the sender
    made, _ = _made(world, capsys)
    crafted = _crafted(made, tmp_path / "escape.tar", lambda root: _add_untracked(root, "escape/evil.py", b"pwned\n"))

    before = _snapshot(outside)
    code, _, err = _reproduce(world, capsys, crafted)
    assert code == 31
    line = _error_line(err)
    assert line.startswith("error: refused to write escape/evil.py in ") and line.endswith(
        ": escape is a symbolic link or not a folder"
    ), line
    assert _snapshot(outside) == before and not (outside / "evil.py").exists()


def test_a_link_made_by_the_runs_patch_leads_nothing_out(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path, outside: Path
) -> None:
    _git_init(world.project)
    (world.project / "link").symlink_to(outside)
    subprocess.run(["git", "-C", str(world.project), "add", "link"], check=True)  # in the run's diff.patch
    made, _ = _made(world, capsys)

    def declare(root: Path) -> None:
        def change(record: dict[str, object]) -> None:
            record["declared_outputs"] = [*record["declared_outputs"], "link/metrics.json"]  # type: ignore[misc]

        _edit_record(root, change)

    crafted = _crafted(made, tmp_path / "patch.tar", declare)
    world.launcher.writes["link/metrics.json"] = b"{}"  # what the re-run's command writes (here: through the link)
    launches = len(world.launcher.launched)
    before = _snapshot(outside)
    code, _, err = _reproduce(world, capsys, crafted)
    assert code == 31
    line = _error_line(err)
    assert line.startswith("error: refused: link/metrics.json leads out of the reproduction's work tree ("), line
    assert line.endswith(") through a symbolic link"), line
    assert len(world.launcher.launched) == launches, "nothing ran"
    assert _snapshot(outside) == before


def test_an_input_linked_to_a_host_file_is_not_mounted(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path, outside: Path
) -> None:
    secret = outside / "secret.txt"
    secret.write_text("the receiver's own\n")
    (world.project / "data").symlink_to(secret)  # committed; for the sender's own run, a link out is fine
    made, record = _made(world, capsys, "--input", "data")
    assert record.inputs is not None and record.inputs.paths == ("data",)
    launches = len(world.launcher.launched)

    code, _, err = _reproduce(world, capsys, _crafted(made, tmp_path / "input.tar", lambda _root: None))
    assert code == 31
    kept = tmp_path / "receiver" / f"envlock-reproduction-{record.run_id}"
    assert _error_line(err) == f"error: refused: input data leads out of the rebuilt project ({kept})"
    assert len(world.launcher.launched) == launches, "no container was started, so nothing was mounted"
    assert secret.read_text() == "the receiver's own\n"


# --- names: a run id is a run id ----------------------------------------------------------------------------------


@pytest.mark.parametrize("named", ["{outside}/x", "../x"])
def test_a_run_id_that_is_a_path_is_refused(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path, outside: Path, named: str
) -> None:
    made, _ = _made(world, capsys)
    run_id = named.format(outside=outside)  # an absolute path (the receiver's own folder), or one climbing out

    def rename(root: Path) -> None:
        manifest = json.loads((root / MANIFEST).read_text())
        manifest["run-id"] = run_id
        (root / MANIFEST).write_text(json.dumps(manifest))

    before = _snapshot(outside)
    code, _, err = _reproduce(world, capsys, _crafted(made, tmp_path / "runid.tar", rename))
    assert code == 31
    bundle = tmp_path / "runid.tar"
    assert _error_line(err) == f"error: {bundle}: bundle.json is malformed: 'run-id' {run_id!r} is not a run id"
    assert _snapshot(outside) == before and not (tmp_path / "x").exists()
    assert list((tmp_path / "receiver").iterdir()) == []


# --- the receiver's engine and environment ---------------------------------------------------------------------------


def test_a_foreign_image_name_never_moves_the_receivers_tag(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    made, record = _made(world, capsys)
    world.engine.remove(record.image_id)  # the receiver lacks the image: it comes from the bundle's archive
    mine = "sha256:" + "1" * 64
    world.engine.tags["mine:prod"] = mine

    def rename(root: Path) -> None:
        _edit_record(root, lambda record: record.update(image_reference="mine:prod"))

    tags = dict(world.engine.tags)
    code, out, err = _reproduce(world, capsys, _crafted(made, tmp_path / "tag.tar", rename))
    assert code == 0 and out.startswith("REPRODUCED"), out + err
    assert world.engine.tags == tags and world.engine.tags["mine:prod"] == mine, "no tag made, none moved"
    assert world.engine.image_id(record.image_id) == record.image_id, "the image is there, by ID"


def test_a_variable_the_bundle_names_is_passed_only_with_env(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    made, _ = _made(world, capsys)
    world.wiring.environ = {"HOST_SECRET": "s3cret"}
    crafted = _crafted(
        made, tmp_path / "env.tar", lambda root: _edit_record(root, lambda r: r.update(passed_env=["HOST_SECRET"]))
    )

    code, out, err = _reproduce(world, capsys, crafted)
    assert code == 0, out + err
    assert "HOST_SECRET" not in world.launcher.launched[-1].environment
    assert "  not compared: environment HOST_SECRET: not passed (not set here, or not named with --env)" in out

    code, out, err = _reproduce(world, capsys, crafted, "--keep", str(tmp_path / "with-env"), "--env", "HOST_SECRET")
    assert code == 0, out + err
    assert world.launcher.launched[-1].environment["HOST_SECRET"] == "s3cret"
    assert "not compared: environment HOST_SECRET" not in out


# --- what stays -------------------------------------------------------------------------------------------------------


def test_keep_holds_the_rebuilt_project_record_and_verdict(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    made, record = _made(world, capsys)
    kept = tmp_path / "review"
    code, out, err = _reproduce(world, capsys, made, "--keep", str(kept))
    assert code == 0 and out.startswith("REPRODUCED"), out + err
    assert f"bundle's project rebuilt in {kept} (kept)" in err
    (new,) = [run for run in RunStore(kept).all() if run.run_id != record.run_id]
    assert new.reproduces == record.run_id
    verdict = json.loads((kept / ".envlock" / "runs" / new.run_id / "verdict.json").read_text())
    assert verdict["verdict"] == "REPRODUCED" and (kept / "pyproject.toml").is_file()
    assert list((tmp_path / "receiver").iterdir()) == [], "no default folder besides"

    code, _, err = _reproduce(world, capsys, made, "--keep", str(kept))
    assert code == 2
    assert _error_line(err) == (
        f"error: {kept} already exists and is not an empty folder: a reproduction is rebuilt in a new one"
    )
