"""The bytecode folder filled by the image's own interpreter when the image is built or first used."""

from __future__ import annotations

import importlib.util
import os
import py_compile
import subprocess
import sys
from pathlib import Path

from envlock.engine.launch import (
    BYTECODE_DIR,
    BYTECODE_DONE,
    COMPILE_CPU_SHARES,
    COMPILE_POOL_FROM,
    COMPILE_SCRIPT,
    DockerLauncher,
)
from tests.fakes import FakeDockerClient

IMAGE = "sha256:" + "ab" * 32


def test_the_compile_runs_in_the_image_in_the_background_once(tmp_path: Path) -> None:
    client = FakeDockerClient()
    launcher = DockerLauncher(client, bytecode_root=tmp_path / "pyc")
    assert launcher.compile_bytecode(IMAGE, "1000:1000")
    (request,) = client.containers.created
    folder = tmp_path / "pyc" / ("ab" * 32)
    assert request["image"] == IMAGE and request["command"] == ["python", "-c", COMPILE_SCRIPT]
    assert request["name"] == f"envlock-pyc-{'ab' * 6}-{os.getuid()}" and request["user"] == "1000:1000"
    assert request["environment"] == {"PYTHONPYCACHEPREFIX": BYTECODE_DIR}
    assert [(m["Target"], m["Source"]) for m in request["mounts"]] == [(BYTECODE_DIR, str(folder))]
    assert request["auto_remove"] and request["detach"] and request["network_disabled"]
    assert request["cpu_shares"] == COMPILE_CPU_SHARES, "a run started meanwhile gets the cores first"
    assert client.containers.started == [request["name"]]
    assert not launcher.compile_bytecode(IMAGE, "1000:1000"), "a compile of it is running: not a second"
    assert len(client.containers.created) == 1


def test_a_filled_folder_is_neither_compiled_again_nor_touched(tmp_path: Path) -> None:
    client = FakeDockerClient()
    folder = tmp_path / "pyc" / ("ab" * 32)
    folder.mkdir(parents=True)
    (folder / BYTECODE_DONE).write_text("")
    os.utime(folder, (1, 1))
    assert not DockerLauncher(client, bytecode_root=tmp_path / "pyc").compile_bytecode(IMAGE, "1000:1000")
    assert client.containers.created == [] and folder.stat().st_mtime == 1
    assert not DockerLauncher(client).compile_bytecode(IMAGE, "1000:1000"), "no bytecode root: nothing to fill"


def _compile(root: Path, prefix: Path) -> None:
    """The script itself, on this host's Python, over one root (the image runs it over its own sys.path)."""
    environment = {**os.environ, "PYTHONPYCACHEPREFIX": str(prefix), "SOURCE_DATE_EPOCH": "1"}
    subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, str(root)], env=environment, check=True)


def _pyc(prefix: Path, source: Path) -> Path:
    """Where PYTHONPYCACHEPREFIX puts a source's pyc."""
    return prefix / source.parent.relative_to("/") / f"{source.stem}.{sys.implementation.cache_tag}.pyc"


def test_the_compile_script_fills_a_prefix_with_timestamp_bytecode_and_marks_it_done(tmp_path: Path) -> None:
    source = tmp_path / "src" / "pkg"
    source.mkdir(parents=True)
    (source / "mod.py").write_text("VALUE = 1\n")
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    _compile(tmp_path / "src", prefix)
    (compiled,) = prefix.rglob("mod.*.pyc")
    assert compiled == _pyc(prefix, source / "mod.py")
    assert compiled.read_bytes()[4:8] == b"\0\0\0\0", "flags 0: a timestamp pyc, as an import writes"
    assert (prefix / BYTECODE_DONE).is_file()


def test_the_compile_script_leaves_current_bytecode_alone_and_rewrites_only_what_an_import_would_reject(
    tmp_path: Path,
) -> None:
    """A seeded folder: a pyc whose header matches its source (magic, flags 0, mtime, size) is kept as it is,
    linked file and all; a missing one, one for a source of another size, a hash-based one and one of another
    interpreter are written anew."""
    root = tmp_path / "src"
    root.mkdir()
    prefix = tmp_path / "prefix"
    for name in ("kept", "resized", "hashed", "foreign", "missing"):
        (root / f"{name}.py").write_text(f"NAME = {name!r}\n")
        os.utime(root / f"{name}.py", (1_700_000_000, 1_700_000_000))
    for name in ("kept", "resized", "foreign"):
        py_compile.compile(str(root / f"{name}.py"), str(_pyc(prefix, root / f"{name}.py")), doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)  # fmt: skip
    py_compile.compile(str(root / "hashed.py"), str(_pyc(prefix, root / "hashed.py")), doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)  # fmt: skip
    foreign = _pyc(prefix, root / "foreign.py")
    foreign.write_bytes(b"\xff\xff" + foreign.read_bytes()[2:])
    (root / "resized.py").write_text("NAME = 'resized, and longer'\n")
    os.utime(root / "resized.py", (1_700_000_000, 1_700_000_000))  # the same mtime: only the size tells
    kept = _pyc(prefix, root / "kept.py")
    seeded = tmp_path / "seeded.pyc"
    os.link(kept, seeded)
    before = kept.stat()

    _compile(root, prefix)

    after = kept.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_nlink) == (before.st_ino, before.st_mtime_ns, 2)
    for name in ("resized", "hashed", "foreign", "missing"):
        source = root / f"{name}.py"
        header = _pyc(prefix, source).read_bytes()[:16]
        stamp = (int(source.stat().st_mtime), source.stat().st_size)
        assert header == importlib.util.MAGIC_NUMBER + bytes(4) + b"".join(n.to_bytes(4, "little") for n in stamp), name


def test_many_stale_sources_are_compiled_across_the_cores_all_of_them(tmp_path: Path) -> None:
    root = tmp_path / "src" / "many"
    root.mkdir(parents=True)
    count = COMPILE_POOL_FROM + 6
    for index in range(count):
        (root / f"m{index}.py").write_text(f"INDEX = {index}\n")
    (root / "broken.py").write_text("def (:\n")  # a source that does not compile ends nothing: it stays without
    prefix = tmp_path / "prefix"
    _compile(tmp_path / "src", prefix)
    assert all(_pyc(prefix, root / f"m{index}.py").is_file() for index in range(count))
    assert not _pyc(prefix, root / "broken.py").exists()
    assert (prefix / BYTECODE_DONE).is_file()
