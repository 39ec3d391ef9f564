"""`envlock diff IMAGE IMAGE` through a fake engine: each image's embedded lock is read out of its layers (as
`envlock diff` does with engine.read_file at LOCK_PATH), verified, and compared."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from envlock.engine.archive import write_archive
from envlock.engine.docker import save_file
from envlock.errors import EngineError, LockfileError
from envlock.image.build import Builder, build_image
from envlock.image.layers import write_layer
from envlock.image.plan import LOCK_PATH
from envlock.lock import lockfile
from envlock.lock.lockdiff import LockDiff, diff_locks
from envlock.lock.lockfile import Lock
from envlock.lock.targets import host_platform
from tests.fakes import FakeEngine, project_with_wheels, stores

pytestmark = pytest.mark.skipif(host_platform() != "linux/amd64", reason="the fixtures lock linux/amd64")


def build(
    tmp_path: Path, write_project: Callable[[str], Path], engine: FakeEngine, names: list[str], version: str
) -> tuple[str, str]:
    """Lock and build a project into engine; returns the image's name:tag and the lock text it was built from."""
    spec, served = project_with_wheels(tmp_path, write_project, names, version)
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    text = spec.lock_path.read_text(encoding="utf-8")
    outcome = build_image(
        lockfile.read(spec.lock_path),
        "demo",
        "linux/amd64",
        Builder(engine=engine, cache=cache, layers=layers, bases=bases),
    )
    return outcome.reference, text


def embedded_lock(engine: FakeEngine, name: str) -> Lock:
    """One side of `envlock diff` when it names a local image."""
    assert engine.image_id(name) is not None
    text = engine.read_file(name, "/" + LOCK_PATH).decode("utf-8")
    return lockfile.loads(text, Path(f"{name}:/{LOCK_PATH}"))


def test_two_images_differ_by_their_embedded_locks(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    engine = FakeEngine()
    old, old_text = build(tmp_path, write_project, engine, ["alpha"], "1.0")
    new, new_text = build(tmp_path, write_project, engine, ["alpha", "beta"], "2.0")
    assert old != new and engine.image_id(old) != engine.image_id(new)

    assert engine.read_file(old, "/" + LOCK_PATH).decode() == old_text, "the image holds the lock, byte for byte"
    assert engine.read_file(new, LOCK_PATH).decode() == new_text, "with or without the leading slash"
    changes = diff_locks(embedded_lock(engine, old), embedded_lock(engine, new))
    assert changes.lines() == ["linux/amd64: + beta 2.0", "linux/amd64: ~ alpha 1.0 -> 2.0"]
    assert not diff_locks(embedded_lock(engine, new), lockfile.loads(new_text)), "same lock: no differences"


def test_an_image_keeps_its_lock_through_an_archive(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    engine = FakeEngine()
    name, text = build(tmp_path, write_project, engine, ["alpha"], "1.0")
    image_id = engine.image_id(name)
    assert image_id is not None
    save_file(engine, name, tmp_path / "demo.tar")
    elsewhere = FakeEngine()
    loaded = elsewhere.load(lambda sink: sink.write((tmp_path / "demo.tar").read_bytes()))
    assert loaded == image_id
    assert elsewhere.read_file(loaded, "/" + LOCK_PATH).decode() == text


def test_reading_what_is_not_there_is_an_engine_error(tmp_path: Path, write_project: Callable[[str], Path]) -> None:
    engine = FakeEngine()
    name, _ = build(tmp_path, write_project, engine, ["alpha"], "1.0")
    with pytest.raises(EngineError, match=r"Could not find the file /etc/envlock/other\.lock"):
        engine.read_file(name, "/etc/envlock/other.lock")
    with pytest.raises(EngineError, match="No such image: demo:absent"):
        engine.read_file("demo:absent", "/" + LOCK_PATH)
    assert engine.read_file(name, "/etc/envlock") == b"", "a directory reads as nothing, as from `docker cp`"


def test_an_image_whose_lock_was_edited_by_hand_is_refused(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    engine = FakeEngine()
    _, text = build(tmp_path, write_project, engine, ["alpha"], "1.0")
    edited = text.replace('version = "1.0"', 'version = "1.1"', 1)
    assert edited != text
    root = tmp_path / "doctored"
    (root / LOCK_PATH).parent.mkdir(parents=True)
    (root / LOCK_PATH).write_text(edited, encoding="utf-8")
    layer = write_layer(root, tmp_path / "doctored.tar", 0)
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]}}
    )
    image_id = engine.load(lambda sink: write_archive(sink, config.encode(), [(layer.diff_id, layer.tar)]))
    engine.tag(image_id, "demo", "doctored")
    with pytest.raises(LockfileError, match="edited by hand"):
        embedded_lock(engine, "demo:doctored")


def test_lock_change_lines_are_written_for_people_not_as_python_reprs() -> None:
    changes = LockDiff(
        environment={
            "local-packages": (None, [{"name": "demo", "path": ".", "requires": ["six==1.16.0"]}]),
            "system-packages": (["ffmpeg"], []),
            "editable": (False, True),
        }
    )
    assert changes.lines() == [
        "local-packages: none -> [{name = demo, path = ., requires = [six==1.16.0]}]",
        "system-packages: [ffmpeg] -> []",
        "editable: false -> true",
    ]
