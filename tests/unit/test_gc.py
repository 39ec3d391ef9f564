"""`envlock gc` through FakeEngine and stores under tmp_path: what no lock or run needs goes, the rest stays."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from envlock.cli.app import run
from envlock.cli.wiring import Wiring
from envlock.engine.launch import bytecode_folder
from envlock.errors import CacheBusyError
from envlock.image.build import Builder
from envlock.image.gc import GRACE_SECONDS, Needed, _exclusive, collect_garbage
from envlock.image.plan import plan_image
from envlock.lock import lockfile
from envlock.lock.project import lock_project
from envlock.lock.resolve import LockedFile, LockedPackage
from envlock.lock.spec import load_spec
from envlock.paths import CacheLayout
from envlock.run.gcneeds import needed_by
from envlock.run.records import RunRecord, RunStore
from tests.fakes import FakeEngine, FakeResolver, stores
from tests.wheelmaker import build_wheel

LATER = time.time() + 3600  # every entry is older than the grace period then


def _locked(project: Path, wheels: Path, names: list[str], served: dict[str, bytes]) -> None:
    packages = []
    for name in names:
        built = build_wheel(wheels, name, "1.0")
        data = built.read_bytes()
        url = f"https://files.example/{built.name}"
        served[url] = data
        packages.append(LockedPackage(name, "1.0", (LockedFile(built.name, url, hashlib.sha256(data).hexdigest()),)))
    (project / "pyproject.toml").write_text(f'[project]\nname = "demo"\ndependencies = {names!r}\n'.replace("'", '"'))
    lock_project(load_spec(project), FakeResolver({"linux/amd64": packages}))


def _build(project: Path, builder: Builder) -> str:
    lock = lockfile.read(project / "envlock.lock")
    plan = plan_image(lock, "demo", "linux/amd64")
    return builder.build(plan).image_id


@pytest.fixture
def two_builds(tmp_path: Path) -> tuple[Path, FakeEngine, CacheLayout, str, str]:
    """A project built at an old lock (alpha, beta) and then at its current one (alpha, gamma)."""
    project, wheels = tmp_path / "project", tmp_path / "wheels"
    project.mkdir()
    wheels.mkdir()
    served: dict[str, bytes] = {}  # the fake index sees what later locks add: the same dict
    cache = CacheLayout(tmp_path / "cache")
    engine = FakeEngine()
    _locked(project, wheels, ["alpha", "beta"], served)
    wheel_cache, layers, bases, _ = stores(cache.root, served)
    builder = Builder(engine, wheel_cache, layers, bases)
    old = _build(project, builder)
    _locked(project, wheels, ["alpha", "gamma"], served)
    return project, engine, cache, old, _build(project, builder)


def _wheel_names(cache: CacheLayout) -> set[str]:
    return {p.name for p in (cache.wheels / "sha256").glob("*/*")}


def test_gc_removes_the_old_locks_image_layers_and_wheels_and_keeps_the_current(
    two_builds: tuple[Path, FakeEngine, CacheLayout, str, str],
) -> None:
    project, engine, cache, old, new = two_builds
    wheels_before, layers_before = _wheel_names(cache), set(cache.layers.glob("*.tar"))
    needed, broken = needed_by([project])
    dry = collect_garbage(needed, engine, cache, dry_run=True, now=LATER)
    assert old in engine.images and _wheel_names(cache) == wheels_before, "--dry-run removes nothing"
    said: list[str] = []
    done = collect_garbage(needed, engine, cache, now=LATER, report=said.append)
    assert [(r.kind, r.name) for r in done.removed] == [(r.kind, r.name) for r in dry.removed]
    assert set(engine.images) == {new} and broken == []
    assert len(_wheel_names(cache)) == len(wheels_before) - 1, "beta's wheel went"
    assert 0 < len(set(cache.layers.glob("*.tar"))) < len(layers_before)
    assert done.freed > 0 and any(line.startswith("removing image demo:") for line in said)
    assert collect_garbage(needed, engine, cache, now=LATER).removed == [], "a second gc has nothing to do"


def test_a_runs_image_and_its_locks_needs_survive(two_builds: tuple[Path, FakeEngine, CacheLayout, str, str]) -> None:
    project, engine, cache, old, new = two_builds
    store = RunStore(project)
    # A run made at the old lock: its record names the old image and keeps a copy of the old lock.
    run_dir = store.directory("20260101T000000Z-abcdef")
    run_dir.mkdir(parents=True)
    (run_dir / "envlock.lock").write_bytes(engine.read_file(old, "/etc/envlock/envlock.lock"))
    record = RunRecord(
        "20260101T000000Z-abcdef", "finished", ["true"], old, "demo:old", [], "sha256:x", "linux/amd64", None, None, 0,
        {}, [], False, [], "2026-01-01T00:00:00Z", "c", 1, ended="2026-01-01T00:00:01Z", exit_code=0,
    )  # fmt: skip
    (run_dir / "record.json").write_text(json.dumps(record.as_dict()))
    wheels_before = _wheel_names(cache)
    needed, _ = needed_by([project])
    collect_garbage(needed, engine, cache, now=LATER)
    assert set(engine.images) == {old, new} and _wheel_names(cache) == wheels_before


def test_fresh_entries_are_left_alone(two_builds: tuple[Path, FakeEngine, CacheLayout, str, str]) -> None:
    project, engine, cache, _, _ = two_builds
    needed, _ = needed_by([project])
    result = collect_garbage(needed, engine, cache)  # now: every file was just written
    assert all(r.kind == "image" for r in result.removed) and result.kept_recent > 0


def test_a_second_gc_at_the_same_time_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = CacheLayout(tmp_path / "cache")
    with _exclusive(cache), pytest.raises(CacheBusyError):
        collect_garbage(needed_by([])[0], FakeEngine(), cache)
    with _exclusive(cache):
        code = run(["gc", "-C", str(tmp_path)], Wiring(engine_=FakeEngine(), cache_dir=cache.root))
    assert code == 28 and "another `envlock gc`" in capsys.readouterr().err


def test_gc_command_prints_what_it_removes_and_the_bytes_freed(
    two_builds: tuple[Path, FakeEngine, CacheLayout, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    project, engine, cache, old, _ = two_builds
    wiring = Wiring(engine_=engine, cache_dir=cache.root)
    assert run(["gc", "--dry-run", "-C", str(project)], wiring) == 0
    out = capsys.readouterr().out
    assert "would remove image demo:" in out and "would free" in out and old in engine.images


def test_images_of_other_projects_are_never_candidates(
    two_builds: tuple[Path, FakeEngine, CacheLayout, str, str],
) -> None:
    project, engine, cache, old, new = two_builds
    for name in [n for n, target in engine.tags.items() if target == old]:
        del engine.tags[name]
    engine.tags["someone-else:v1"] = old  # the same engine, another project's image
    collect_garbage(needed_by([project])[0], engine, cache, now=LATER)
    assert set(engine.images) == {old, new}


def _image_folder(root: Path, image_id: str, *, read_only: bool = False) -> Path:
    folder = root / image_id.removeprefix("sha256:")
    inner = folder / "rootfs" / "usr" / "lib"
    inner.mkdir(parents=True)
    (inner / "module.pyc").write_bytes(b"x" * 100)
    if read_only:  # as an unpacked image's folders can be: gc must still remove them
        inner.chmod(0o555)
        inner.parent.chmod(0o555)
    return folder


def test_per_image_folders_go_with_their_image(two_builds: tuple[Path, FakeEngine, CacheLayout, str, str]) -> None:
    """Bytecode folders and Charliecloud's unpacked images of removed images are freed; the kept image's stay,
    and so do folders being made (dot-names) and folders in use (touched within the grace period)."""
    project, engine, cache, old, new = two_builds
    gone = "sha256:" + "e" * 64  # an image no engine nor record knows any more
    folders = {
        "old bytecode": _image_folder(cache.bytecode, old),
        "new bytecode": _image_folder(cache.bytecode, new),
        "orphan bytecode": _image_folder(cache.bytecode, gone),
        "old charliecloud": _image_folder(cache.charliecloud, old, read_only=True),
        "new charliecloud": _image_folder(cache.charliecloud, new),
        "being made": _image_folder(cache.charliecloud, ".eeee-partial"),
    }
    needed, _ = needed_by([project])
    dry = collect_garbage(needed, engine, cache, dry_run=True, now=LATER)
    assert all(folder.is_dir() for folder in folders.values()), "--dry-run removes nothing"
    done = collect_garbage(needed, engine, cache, now=LATER)
    assert [(r.kind, r.name) for r in done.removed] == [(r.kind, r.name) for r in dry.removed]
    left = {name for name, folder in folders.items() if folder.is_dir()}
    assert left == {"new bytecode", "new charliecloud", "being made"}
    freed = {(r.kind, r.name): r.size for r in done.removed if r.kind in ("bytecode", "charliecloud")}
    assert freed == {("bytecode", old[7:19]): 100, ("bytecode", gone[7:19]): 100, ("charliecloud", old[7:19]): 100}
    assert not [p for p in cache.charliecloud.iterdir() if ".removing-" in p.name], "nothing half-removed is left"


def test_a_folder_in_use_or_named_by_a_run_is_kept(
    two_builds: tuple[Path, FakeEngine, CacheLayout, str, str],
) -> None:
    project, engine, cache, _, _ = two_builds
    recorded = "sha256:" + "d" * 64  # not in the engine, but a run record names it: restorable, so kept
    in_use = _image_folder(cache.bytecode, "sha256:" + "c" * 64)
    named = _image_folder(cache.bytecode, recorded)
    needed, _ = needed_by([project])
    needed = Needed(needed.locks, needed.image_ids | {recorded}, needed.repositories)
    old_enough = time.time() - GRACE_SECONDS - 60
    os.utime(named, (old_enough, old_enough))
    os.utime(in_use, (old_enough, old_enough))
    bytecode_folder(cache.bytecode, "sha256:" + "c" * 64)  # a run starts with it: touched
    collect_garbage(needed, engine, cache)
    assert in_use.is_dir() and named.is_dir()
