"""Bytecode: written by runs into a per-image folder on the host, never into an image (so never into its ID)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from envlock.engine.launch import BYTECODE_DIR, LaunchSpec, bind_mounts, bytecode_folder
from envlock.image.build import build_image
from envlock.image.layers import write_layer
from envlock.lock import lockfile
from envlock.lock.targets import host_platform
from envlock.paths import CacheLayout
from tests.fakes import FakeEngine, project_with_wheels, stores


def test_bytecode_in_a_staged_tree_never_reaches_the_layer(tmp_path: Path) -> None:
    ids = []
    for name, with_bytecode in (("plain", False), ("compiled", True)):
        root = tmp_path / name
        (root / "pkg").mkdir(parents=True)
        (root / "pkg" / "mod.py").write_text("x = 1\n", encoding="utf-8")
        if with_bytecode:
            (root / "pkg" / "__pycache__").mkdir()
            (root / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\xa7\r\r\n" + b"\0" * 12)
            (root / "pkg" / "mod.pyc").write_bytes(b"stale")
        ids.append(write_layer(root, tmp_path / f"{name}.tar", 1700000000).diff_id)
    assert ids[0] == ids[1]


@pytest.mark.skipif(host_platform() != "linux/amd64", reason="the fixtures lock linux/amd64")
def test_runs_writing_bytecode_never_change_the_image_id_of_a_lock(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    spec, served = project_with_wheels(tmp_path, write_project, ["alpha", "torch"])
    lock = lockfile.read(spec.lock_path)
    cache, layers, bases, _ = stores(tmp_path / "one", served)
    first = build_image(lock, "demo", "linux/amd64", engine=FakeEngine(), cache=cache, layers=layers, bases=bases)
    # A run fills the image's bytecode folder (as Python does under PYTHONPYCACHEPREFIX) ...
    folder = bytecode_folder(CacheLayout(tmp_path / "one").bytecode, first.image_id)
    assert folder is not None and folder.is_dir() and folder.name == first.image_id.removeprefix("sha256:")
    (folder / "opt" / "envlock" / "venv").mkdir(parents=True)
    (folder / "opt" / "envlock" / "venv" / "alpha.cpython-311.pyc").write_bytes(b"bytecode")
    # ... and the lock still gives the same image, rebuilt here or built from empty caches elsewhere.
    again = build_image(
        lock, "demo", "linux/amd64", engine=FakeEngine(), cache=cache, layers=layers, bases=bases, no_cache=True
    )
    cache, layers, bases, _ = stores(tmp_path / "two", served)
    elsewhere = build_image(lock, "demo", "linux/amd64", engine=FakeEngine(), cache=cache, layers=layers, bases=bases)
    assert first.image_id == again.image_id == elsewhere.image_id


def test_the_bytecode_folder_is_mounted_per_image(tmp_path: Path) -> None:
    image_id = "sha256:" + "b" * 64
    spec = LaunchSpec(image_id, ["true"], "c", tmp_path, {}, "0:0", gpus=False)
    folder = bytecode_folder(tmp_path / "pyc", image_id)
    assert folder == tmp_path / "pyc" / ("b" * 64)
    mounts = bind_mounts(spec, folder)
    assert (mounts[-1]["Source"], mounts[-1]["Target"]) == (str(folder), BYTECODE_DIR)
    assert bytecode_folder(None, image_id) is None
    (tmp_path / "file").write_text("", encoding="utf-8")
    assert bytecode_folder(tmp_path / "file", image_id) is None, "no cache, no failure: Python compiles in memory"
