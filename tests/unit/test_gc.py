"""`envlock gc` through FakeEngine and stores under tmp_path: what no lock or run needs goes, the rest stays."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from envlock.cli.app import run
from envlock.cli.wiring import Wiring
from envlock.engine.bytecode import LISTINGS_DIR
from envlock.engine.launch import bytecode_folder
from envlock.errors import CacheBusyError
from envlock.fsutil import tree_size
from envlock.image.build import Builder
from envlock.image.gc import GRACE_SECONDS, Needed, _exclusive, collect_garbage
from envlock.image.plan import plan_image
from envlock.lock import lockfile
from envlock.lock.backend import BackendMetadata, IsolatedBackend
from envlock.lock.project import lock_project
from envlock.lock.resolve import LockedFile, LockedPackage
from envlock.lock.spec import load_spec
from envlock.paths import CacheLayout, ProjectLayout
from envlock.run.gcneeds import needed_by, needed_by_roots
from envlock.run.records import RunRecord, RunStore
from envlock.run.service import own_metadata
from tests.fakes import FakeEngine, FakeMetadataSource, FakeResolver, stores
from tests.unit.test_backend import PYPROJECT, _commit, _in_tree
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


def test_layer_listings_go_with_the_last_image_of_their_layer(
    two_builds: tuple[Path, FakeEngine, CacheLayout, str, str],
) -> None:
    """What each layer holds (kept to seed bytecode folders) is freed once no kept image has the layer."""
    project, engine, cache, _, new = two_builds
    (kept_image,) = [image for image in engine.envlock_images() if image.image_id == new]
    listings = cache.bytecode / LISTINGS_DIR
    listings.mkdir(parents=True)
    kept = listings / f"{kept_image.diff_ids[-1].removeprefix('sha256:')}.json"
    gone = listings / f"{'f' * 64}.json"
    for path in (kept, gone):
        path.write_text("{}")
    collect_garbage(needed_by([project])[0], engine, cache, now=LATER)
    assert kept.is_file() and not gone.exists()


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


# --- the project's own metadata (.envlock/local-metadata) and the cache's build backends ---


def _scm_project(tmp_path: Path) -> tuple[Path, lockfile.Lock]:
    """A project whose own package takes its version from VCS, locked (through the fakes)."""
    project = tmp_path / "scm-proj"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[tool.setuptools_scm]\n[tool.envlock]\n[project]\nname = "scm-pkg"\n[build-system]\nrequires = []\n'
    )
    answer = BackendMetadata("scm-pkg", "1.0.dev1", ("six==1.16.0",), (), "setuptools.build_meta", ())
    spec = load_spec(project, FakeMetadataSource({"scm-proj": answer}))
    lock = lock_project(spec, FakeResolver({"linux/amd64": []})).lock
    # From here on gc reads a static [project]: no build backend is asked (none could run offline).
    (project / "pyproject.toml").write_text('[project]\nname = "scm-pkg"\nversion = "1"\n[tool.envlock]\n')
    return project, lock


def _run_with_versions(project: Path, run_id: str, versions: dict[str, str]) -> None:
    run_dir = RunStore(project).directory(run_id)
    run_dir.mkdir(parents=True)
    shutil.copy(project / "envlock.lock", run_dir / "envlock.lock")
    record = RunRecord(
        run_id, "finished", ["true"], "sha256:" + "a" * 64, "scm-pkg:x", [], "sha256:x", "linux/amd64", None, None,
        0, {}, [], False, [], "2026-01-01T00:00:00Z", "c", 1, ended="2026-01-01T00:00:01Z", exit_code=0,
        package_versions=versions,
    )  # fmt: skip
    (run_dir / "record.json").write_text(json.dumps(record.as_dict()))


def test_own_metadata_no_run_names_is_freed_and_a_runs_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project, lock = _scm_project(tmp_path)
    cache = CacheLayout(tmp_path / "cache")
    kept = own_metadata(lock, {"scm-pkg": "1.0.dev1+gaaaaaaa"}, project)
    stale = own_metadata(lock, {"scm-pkg": "1.0.dev2+gbbbbbb"}, project)  # a commit no kept run was made at
    assert kept is not None and kept.folder is not None and stale is not None and stale.folder is not None
    _run_with_versions(project, "20260101T000000Z-abcdef", {"scm-pkg": "1.0.dev1+gaaaaaaa"})
    being_made = ProjectLayout(project).local_metadata / ".local-metadata-x"
    being_made.mkdir()
    size = tree_size(stale.folder)

    wiring = Wiring(engine_=FakeEngine(), cache_dir=cache.root)
    old = time.time() - GRACE_SECONDS - 60
    for folder in (kept.folder, stale.folder, being_made):
        os.utime(folder, (old, old))
    assert run(["gc", "--dry-run", "-C", str(project)], wiring) == 0
    out = capsys.readouterr().out
    assert f"would remove own-metadata {stale.folder.name[:12]} ({size} bytes)" in out, out
    assert kept.folder.name[:12] not in out and stale.folder.is_dir(), "--dry-run removes nothing"
    assert run(["gc", "-C", str(project)], wiring) == 0
    assert kept.folder.is_dir() and being_made.is_dir() and not stale.folder.exists()
    assert [p.name for p in ProjectLayout(project).local_metadata.iterdir() if ".removing-" in p.name] == []


def test_own_metadata_made_within_the_grace_period_is_kept(tmp_path: Path) -> None:
    project, lock = _scm_project(tmp_path)
    cache = CacheLayout(tmp_path / "cache")
    fresh = own_metadata(lock, {"scm-pkg": "1.0.dev3+gccccccc"}, project)  # a run starting now: no record yet
    assert fresh is not None and fresh.folder is not None
    result = collect_garbage(needed_by_roots([project], cache).needed, FakeEngine(), cache)
    assert fresh.folder.is_dir() and result.kept_recent > 0


def test_own_metadata_gc_never_follows_a_link_out_of_the_project(tmp_path: Path) -> None:
    project, _ = _scm_project(tmp_path)
    cache = CacheLayout(tmp_path / "cache")
    elsewhere = tmp_path / "elsewhere"
    victim = elsewhere / ("f" * 64)
    (victim / "x.dist-info").mkdir(parents=True)
    (victim / "x.dist-info" / "METADATA").write_text("precious")
    ProjectLayout(project).state.mkdir(parents=True, exist_ok=True)
    ProjectLayout(project).local_metadata.symlink_to(elsewhere, target_is_directory=True)
    result = collect_garbage(needed_by_roots([project], cache).needed, FakeEngine(), cache, now=LATER)
    assert (victim / "x.dist-info" / "METADATA").read_text() == "precious" and result.removed == []
    ProjectLayout(project).local_metadata.unlink()
    ProjectLayout(project).local_metadata.mkdir()
    (ProjectLayout(project).local_metadata / ("e" * 64)).symlink_to(victim, target_is_directory=True)
    collect_garbage(needed_by_roots([project], cache).needed, FakeEngine(), cache, now=LATER)
    assert (victim / "x.dist-info" / "METADATA").read_text() == "precious"


def test_build_backend_entries_the_project_no_longer_uses_are_freed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An in-tree backend (no network): its metadata at the old version files goes, the current one and the venv
    of its build requirements stay; a venv no project needs goes; one being made and a link out stay."""
    cache = CacheLayout(tmp_path / "cache")
    monkeypatch.setenv("ENVLOCK_CACHE_DIR", str(cache.root))  # the backend gc's spec reading asks: this cache
    project = _in_tree(tmp_path, "3.1.4")
    backend = IsolatedBackend(cache.build_backends)
    backend.metadata(project)
    first = set((cache.build_backends / "metadata").iterdir())
    (project / "src" / "intree_pkg" / "__init__.py").write_text('__version__ = "3.2.0"\n')  # a version file moved
    (project / "VERSION").write_text("3.2.0")
    backend.metadata(project)
    (current,) = set((cache.build_backends / "metadata").iterdir()) - first
    (old,) = first
    (env,) = (cache.build_backends / "envs").iterdir()
    unused = cache.build_backends / "envs" / ("b" * 32)
    (unused / "lib").mkdir(parents=True)
    (unused / "lib" / "big.py").write_bytes(b"x" * 1000)
    (unused / "ready").write_text("")
    being_made = cache.build_backends / "envs" / f".{'c' * 32}-tmp"
    being_made.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.py").write_text("precious")
    (cache.build_backends / "envs" / ("d" * 32)).symlink_to(outside, target_is_directory=True)

    needed = needed_by_roots([project], cache).needed
    dry = collect_garbage(needed, FakeEngine(), cache, dry_run=True, now=LATER, report=print)
    out = capsys.readouterr().out
    assert f"would remove backend-env {'b' * 12} (1000 bytes)" in out, out
    assert f"would remove backend-metadata {old.stem[:12]} ({old.stat().st_size} bytes)" in out
    assert old.exists() and unused.is_dir(), "--dry-run removes nothing"
    done = collect_garbage(needed, FakeEngine(), cache, now=LATER)
    assert [(r.kind, r.name) for r in done.removed] == [(r.kind, r.name) for r in dry.removed]
    assert not old.exists() and not unused.exists()
    assert current.is_file() and (env / "ready").is_file() and being_made.is_dir()
    assert (outside / "keep.py").read_text() == "precious"
    assert backend.metadata(project).version == "3.2.0" and (tmp_path / "CALLS").read_text() == "xx", "still cached"


def test_build_backend_entries_are_kept_while_a_root_cannot_be_read(tmp_path: Path) -> None:
    cache = CacheLayout(tmp_path / "cache")
    unused = cache.build_backends / "envs" / ("b" * 32)
    unused.mkdir(parents=True)
    result = collect_garbage(Needed(keep_cache=True), FakeEngine(), cache, now=LATER)
    assert unused.is_dir() and result.removed == []


def test_a_version_from_vcs_keeps_this_commits_entry_and_frees_earlier_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = CacheLayout(tmp_path / "cache")
    monkeypatch.setenv("ENVLOCK_CACHE_DIR", str(cache.root))
    project = _in_tree(tmp_path, "1.4.3.dev1+gaaaaaaa")
    (project / "pyproject.toml").write_text(PYPROJECT + "\n[tool.setuptools_scm]\n")
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    _commit(project, "start")
    backend = IsolatedBackend(cache.build_backends)
    backend.metadata(project)  # the lock's (no commit in its key)
    backend.version(project)  # the first commit's run
    before = set((cache.build_backends / "metadata").iterdir())
    (project / "VERSION").write_text("1.4.3.dev2+gbbbbbbb")
    _commit(project, "next")
    backend.version(project)  # the second commit's run
    (this_commit,) = set((cache.build_backends / "metadata").iterdir()) - before
    done = collect_garbage(needed_by_roots([project], cache).needed, FakeEngine(), cache, now=LATER)
    left = set((cache.build_backends / "metadata").iterdir())
    assert [r.kind for r in done.removed] == ["backend-metadata"] and len(left) == 2 and this_commit in left
    assert backend.version(project) == "1.4.3.dev2+gbbbbbbb" and backend.metadata(project).name == "intree-pkg"
    assert (tmp_path / "CALLS").read_text() == "xxx", "neither the lock's nor this commit's was asked again"


def test_an_entry_this_user_cannot_remove_is_reported_and_gc_goes_on(
    two_builds: tuple[Path, FakeEngine, CacheLayout, str, str],
) -> None:
    """A shared cache can hold another user's files that this user may not delete: gc says so in one line per
    entry and frees the rest (an immutable file stands in for the other user's: root bypasses permissions)."""
    project, engine, cache, old, _ = two_builds
    gone = "sha256:" + "e" * 64
    stuck = _image_folder(cache.bytecode, old)
    freeable = _image_folder(cache.bytecode, gone)
    pinned = stuck / "rootfs" / "usr" / "lib" / "module.pyc"
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(pinned)], check=False).returncode:
        pytest.skip("chattr +i is not available on this filesystem (needs root and ext4/xfs)")
    said: list[str] = []
    try:
        done = collect_garbage(needed_by([project])[0], engine, cache, now=LATER, report=said.append)
    finally:
        for path in cache.bytecode.glob("*/rootfs/usr/lib/module.pyc"):  # the folder may have been renamed away
            subprocess.run(["chattr", "-i", str(path)], check=True)
    assert not freeable.exists()
    assert ("bytecode", gone[7:19]) in {(r.kind, r.name) for r in done.removed}
    assert [(r.kind, r.name) for r in done.failed] == [("bytecode", old[7:19])]
    assert ("bytecode", old[7:19]) not in {(r.kind, r.name) for r in done.removed}
    warnings = [line for line in said if line.startswith("warning: cannot remove bytecode")]
    assert len(warnings) == 1 and "Operation not permitted" in warnings[0], said
    # Once its files can go (their owner's turn), the half-removed folder is found and freed; no run ever saw it.
    assert not stuck.exists()
    again = collect_garbage(needed_by([project])[0], engine, cache, now=LATER)
    assert [r.kind for r in again.removed] == ["bytecode"] and not again.failed
    assert list(cache.bytecode.iterdir()) == []
