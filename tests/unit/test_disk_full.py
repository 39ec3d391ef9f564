"""A full project filesystem (a 1 MiB tmpfs) while `lock` writes envlock.lock and while `run` writes its log and
record: one error naming the file and the free space, exit 22, the previous lock intact, the record marked."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from envlock.engine.launch import LaunchSpec
from envlock.engine.runtimes import StreamSink
from envlock.errors import DiskFullError
from envlock.lock import lockfile
from envlock.lock.project import lock_project
from envlock.lock.spec import load_spec
from envlock.run.records import RunStore
from envlock.run.runner import RunRequest
from tests.fakes import FakeLauncher, FakeResolver, cpu_host, package
from tests.unit.test_runner import run


@pytest.fixture
def small_project(tmp_path: Path) -> Iterator[Path]:
    """A project folder on its own 1 MiB tmpfs, unmounted afterwards (the tests run as root)."""
    mountpoint = tmp_path / "project"
    mountpoint.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)]
    done = subprocess.run(mount, capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        (mountpoint / "pyproject.toml").write_text('[project]\nname = "demo"\ndependencies = ["alpha"]\n')
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(folder: Path, name: str = "filler") -> Path:
    """Fill the filesystem of `folder` to the last byte."""
    filler = folder / name
    with contextlib.suppress(OSError), filler.open("wb") as handle:
        for _ in range(4096):
            handle.write(b"\0" * 4096)
            handle.flush()
    return filler


def test_a_full_disk_while_locking_is_one_line_and_the_previous_lock_stays(small_project: Path) -> None:
    lock_project(load_spec(small_project), FakeResolver({"linux/amd64": [package("alpha", "1.0")]}))
    before = (small_project / "envlock.lock").read_bytes()
    fill(small_project)
    (small_project / "pyproject.toml").write_text('[project]\nname = "demo"\ndependencies = ["alpha", "beta"]\n')
    resolver = FakeResolver({"linux/amd64": [package("alpha", "1.0"), package("beta", "2.0")]})
    with pytest.raises(DiskFullError) as caught:
        lock_project(load_spec(small_project), resolver)
    assert caught.value.exit_code == 22
    assert caught.value.message.startswith(
        f"disk full while locking (the previous lock is intact): cannot write {small_project / 'envlock.lock'} ("
    )
    assert f"0 MiB free in {small_project}" in caught.value.message
    assert (small_project / "envlock.lock").read_bytes() == before
    assert sorted(p.name for p in small_project.iterdir()) == ["envlock.lock", "filler", "pyproject.toml"]


class FillingLauncher(FakeLauncher):
    """A command that fills the project's disk (a checkpoint too big), then prints: the log cannot be written.
    `frees`: the checkpoint is removed as the container goes (the record can then be marked failed)."""

    frees: bool = False

    def run(self, spec: LaunchSpec, output: StreamSink) -> int:
        filler = fill(spec.project_dir, "checkpoint.bin")
        try:
            output("stdout", b"x" * 65536)
        finally:
            if self.frees:
                filler.unlink()
        return 0


@pytest.mark.parametrize("frees", [True, False])
def test_a_full_disk_while_running_is_one_line_and_the_record_says_failed(small_project: Path, frees: bool) -> None:
    lock_project(load_spec(small_project), FakeResolver({"linux/amd64": [package("alpha", "1.0")]}))
    launcher = FillingLauncher()
    launcher.frees = frees
    with pytest.raises(DiskFullError) as caught:
        run(small_project, launcher, cpu_host(), RunRequest(command=["python", "train.py"]))
    (record,) = RunStore(small_project).all()
    log = RunStore(small_project).log_path(record.run_id)
    assert caught.value.exit_code == 22
    assert caught.value.message.startswith(f"disk full while recording run {record.run_id}: cannot write {log} (")
    assert "MiB free in" in caught.value.message
    if frees:
        assert record.status == "failed" and record.error == caught.value.message
        assert lockfile.read(small_project / "envlock.lock").lock_hash == record.lock_hash
    else:
        assert caught.value.message.endswith(
            "; the run record could not be marked failed either (it still says running)"
        )
        assert record.status == "running"
        assert json.loads((RunStore(small_project).directory(record.run_id) / "record.json").read_text())
