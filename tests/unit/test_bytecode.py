"""The bytecode folder filled by the image's own interpreter when the image is built or first used."""

from __future__ import annotations

import os
from pathlib import Path

from envlock.engine.launch import BYTECODE_DIR, BYTECODE_DONE, COMPILE_SCRIPT, DockerLauncher
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


def test_the_compile_script_fills_a_prefix_with_timestamp_bytecode_and_marks_it_done(tmp_path: Path) -> None:
    """The script itself, on this host's Python, against a small sys.path (the image runs it with its own)."""
    source = tmp_path / "src" / "pkg"
    source.mkdir(parents=True)
    (source / "mod.py").write_text("VALUE = 1\n")
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    script = COMPILE_SCRIPT.replace(BYTECODE_DIR, str(prefix)).replace(
        "for path in sys.path:", f"for path in [{str(tmp_path / 'src')!r}]:"
    )
    environment = {**os.environ, "PYTHONPYCACHEPREFIX": str(prefix), "SOURCE_DATE_EPOCH": "1"}
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    subprocess.run([sys.executable, "-c", script], env=environment, check=True)
    (compiled,) = prefix.rglob("mod.*.pyc")
    assert compiled.read_bytes()[4:8] == b"\0\0\0\0", "flags 0: a timestamp pyc, as an import writes"
    assert (prefix / BYTECODE_DONE).is_file()
