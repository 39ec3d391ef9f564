"""Seeding a bytecode folder on the real engine: two images that share a base and a layer and differ in a file of
the same path, size and mtime; the second image's folder takes the first's bytecode for the shared layers only, and
each image imports its own bytes."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from envlock.engine.archive import write_archive
from envlock.engine.bytecode import STACK_FILE
from envlock.engine.docker import DockerEngine
from envlock.engine.launch import BYTECODE_DONE, DockerLauncher, LaunchSpec
from envlock.image.bases import BaseStore, BuiltBase, MmdebstrapBuilder
from envlock.image.layers import write_layer
from envlock.lock.recipes import load_recipe

pytestmark = [pytest.mark.docker, pytest.mark.network]
SITE = "usr/local/lib/python3.11/dist-packages"  # on the sys.path of Debian's python3
EPOCH = 1_700_000_000
PROBE = "import keep, mod; print(mod.VALUE, keep.KEEP)"


@pytest.fixture(scope="module")
def base(isolated_cache: Path) -> BuiltBase:
    return BaseStore(isolated_cache / "bases", MmdebstrapBuilder()).ensure(
        load_recipe("debian-bookworm"), "linux/amd64"
    )


class Loader:
    """Loads small images over the real base into the real engine, and removes them afterwards."""

    def __init__(self, base: BuiltBase) -> None:
        self.engine = DockerEngine()
        self.base = base
        self.made: list[str] = []

    def load(self, parts: list[tuple[str, Path]]) -> str:
        """An image of the base and these layers, labelled with its base as envlock's images are."""
        layers = [(self.base.diff_id, self.base.tar), *parts]
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Labels": {"dev.envlock.base": self.base.diff_id}},
            "rootfs": {"type": "layers", "diff_ids": [diff_id for diff_id, _ in layers]},
        }
        blob = json.dumps(config, sort_keys=True).encode()
        image_id = self.engine.load(lambda sink: write_archive(sink, blob, layers))
        self.made.append(image_id)
        return image_id


@pytest.fixture
def loader(base: BuiltBase) -> Iterator[Loader]:
    loader = Loader(base)
    yield loader
    for image_id in loader.made:
        loader.engine.client.images.remove(image_id, force=True)


def layer(tmp_path: Path, name: str, files: dict[str, str], links: dict[str, str] | None = None) -> tuple[str, Path]:
    root = tmp_path / "trees" / name
    root.mkdir(parents=True)
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    for path, target in (links or {}).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).symlink_to(target)
    made = write_layer(root, tmp_path / f"{name}.tar", EPOCH)
    return made.diff_id, made.tar


def compiled(launcher: DockerLauncher, root: Path, image_id: str) -> Path:
    started = launcher.compile_bytecode(image_id, f"{os.getuid()}:{os.getgid()}")
    assert started is not None
    folder = root / image_id.removeprefix("sha256:")
    deadline = time.monotonic() + 300
    while not (folder / BYTECODE_DONE).exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert (folder / BYTECODE_DONE).exists(), "the compile finished"
    return folder


def run(launcher: DockerLauncher, image_id: str, project: Path) -> str:
    out: list[bytes] = []
    spec = LaunchSpec(
        image_id,
        ["python", "-c", PROBE],
        f"envlock-it-seed-{os.getpid()}",
        project,
        {},
        f"{os.getuid()}:{os.getgid()}",
        False,
    )
    code = launcher.run(spec, lambda _stream, data: out.append(data))
    assert code == 0, b"".join(out)
    return b"".join(out).decode().strip()


def test_a_seeded_folder_takes_only_the_shared_layers_bytecode_and_each_image_imports_its_own_bytes(
    tmp_path: Path, base: BuiltBase, loader: Loader
) -> None:
    shared = layer(
        tmp_path, "shared", {f"{SITE}/keep.py": "KEEP = 'kept'\n"}, {"usr/local/bin/python": "/usr/bin/python3"}
    )
    # Same path, size and mtime (the layer's): Python's own check cannot tell these two apart.
    one = layer(tmp_path, "one", {f"{SITE}/mod.py": "VALUE = 1\n"})
    two = layer(tmp_path, "two", {f"{SITE}/mod.py": "VALUE = 2\n"})
    first, second = loader.load([shared, one]), loader.load([shared, two])
    tars = {base.diff_id: base.tar, shared[0]: shared[1], one[0]: one[1], two[0]: two[1]}
    root = tmp_path / "pyc"
    launcher = DockerLauncher(loader.engine.client, bytecode_root=root, layer_tars=tars.get)
    (tmp_path / "project").mkdir()

    earlier = compiled(launcher, root, first)
    assert run(launcher, first, tmp_path / "project") == "1 kept"
    started = launcher.compile_bytecode(second, f"{os.getuid()}:{os.getgid()}")
    assert started is not None and started.seeded is not None
    assert started.seeded.files > 100 and started.seeded.sources == 1, "the stdlib and keep.py, from the first"
    later = root / second.removeprefix("sha256:")
    assert (later / STACK_FILE).is_file()
    deadline = time.monotonic() + 300
    while not (later / BYTECODE_DONE).exists() and time.monotonic() < deadline:
        time.sleep(0.5)

    def pyc(folder: Path, stem: str) -> Path:
        (found,) = (folder / SITE).glob(f"{stem}.cpython-311.pyc")
        return found

    assert pyc(later, "keep").stat().st_ino == pyc(earlier, "keep").stat().st_ino, "linked, not compiled again"
    assert pyc(later, "mod").stat().st_ino != pyc(earlier, "mod").stat().st_ino, "other bytes: never seeded"
    assert run(launcher, second, tmp_path / "project") == "2 kept", "the second image imports its own mod.py"
    assert run(launcher, first, tmp_path / "project") == "1 kept"
    assert pyc(later, "keep").stat().st_ino == pyc(earlier, "keep").stat().st_ino, "the interpreter took the link"
    os_pyc = "usr/lib/python3.11/os.cpython-311.pyc"
    assert (later / os_pyc).stat().st_ino == (earlier / os_pyc).stat().st_ino, "the base's stdlib too"
