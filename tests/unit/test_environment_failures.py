"""The environment failing under envlock's feet (odd files where small ones are expected, read-only or full places,
an engine that cannot be reached, signals): one line with a hint and the table's code, never a traceback or a hang."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import requests

from envlock.cli.app import run, stop_on_sigterm
from envlock.engine.docker import Sink, translated
from envlock.engine.launch import DockerLauncher, LaunchSpec
from envlock.errors import (
    DiskFullError,
    EngineUnreachableError,
    FileAccessError,
    RunNotFoundError,
    RunRecordError,
    SpecError,
)
from envlock.fsutil import environment_error, make_dirs, read_small, read_small_text, unreadable
from envlock.image.bases import BASE_ROOM_BYTES, room_hint
from envlock.image.restore import write_archive_file
from envlock.lock.project import lock_project
from envlock.lock.spec import load_spec
from envlock.run.records import RunStore
from tests.fakes import FakeEngine, FakeResolver, package

PYPROJECT = '[project]\nname = "demo"\nversion = "0.1"\ndependencies = ["alpha"]\n'


@contextlib.contextmanager
def within(seconds: int) -> Iterator[None]:
    """Fail (not hang) when the block takes longer: what a FIFO read without a writer would do."""

    def expired(_signum: int, _frame: FrameType | None) -> None:
        raise TimeoutError(f"still waiting after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def make_odd(path: Path, kind: str) -> None:
    """Put something that is not a small UTF-8 file where one is expected."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "sparse-2g":
        with path.open("wb") as handle:
            handle.truncate(2 << 30)  # 2 GiB of nothing: reading it whole would take 2 GiB of memory
    elif kind == "not-utf8":
        path.write_bytes(b'\xff\xfe[project]\nname = "\xc3\x28"\n')


ODD = ("fifo", "folder", "sparse-2g", "not-utf8")
WORDS = {"fifo": "is a FIFO", "folder": "is a folder", "sparse-2g": "larger than", "not-utf8": "not UTF-8 text"}


@pytest.mark.parametrize("kind", ODD)
def test_a_small_file_is_read_only_when_it_is_a_small_regular_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "file"
    make_odd(path, kind)
    with within(5), pytest.raises((OSError, UnicodeDecodeError)) as caught:
        read_small_text(path)
    assert isinstance(caught.value, (OSError, ValueError))
    assert WORDS[kind] in unreadable(caught.value)


def test_a_file_that_grows_past_the_limit_while_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"x" * 10)
    assert read_small(path, limit=10) == b"x" * 10
    with pytest.raises(OSError, match="larger than the 9"):
        read_small(path, limit=9)


@pytest.fixture
def locked(tmp_path: Path) -> Path:
    """A project locked against a fake index."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT)
    lock_project(load_spec(project), FakeResolver({"linux/amd64": [package("alpha", "1.0")]}))
    return project


def envlock(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    """Run the CLI in-process (at most 10 s: a hang fails); its exit code and its stderr lines."""
    with within(10):
        code = run(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.splitlines()


@pytest.mark.parametrize("kind", ODD)
@pytest.mark.parametrize("argv", [("show",), ("sbom",), ("export", "pylock"), ("lock", "--check")])
def test_an_odd_envlock_lock_is_one_line_exit_3(
    capsys: pytest.CaptureFixture[str], locked: Path, kind: str, argv: tuple[str, ...]
) -> None:
    make_odd(locked / "envlock.lock", kind)
    code, lines = envlock(capsys, *argv, "-C", str(locked))
    assert code == 3, lines
    assert lines[0].startswith("error: ") and "cannot read" in lines[0] and WORDS[kind] in lines[0]
    assert lines[-1].startswith("hint: ")


@pytest.mark.parametrize("kind", ODD)
@pytest.mark.parametrize("argv", [("lock",), ("sbom",), ("init", "--from", "requirements.txt")])
def test_an_odd_pyproject_toml_is_one_line_exit_20(
    capsys: pytest.CaptureFixture[str], locked: Path, kind: str, argv: tuple[str, ...]
) -> None:
    (locked / "requirements.txt").write_text("alpha==1.0\n")
    make_odd(locked / "pyproject.toml", kind)
    code, lines = envlock(capsys, *argv, "-C", str(locked))
    assert code == 20, lines
    assert lines[0].startswith("error: ") and WORDS[kind] in lines[0]
    assert lines[-1].startswith("hint: ")


@pytest.mark.parametrize("source", ["requirements.txt", "Pipfile.lock", "pdm.lock"])
@pytest.mark.parametrize("kind", ODD)
def test_an_odd_requirements_file_to_import_is_one_line_exit_27(
    capsys: pytest.CaptureFixture[str], locked: Path, kind: str, source: str
) -> None:
    make_odd(locked / source, kind)
    before = (locked / "pyproject.toml").read_bytes()
    code, lines = envlock(capsys, "init", "--from", source, "-C", str(locked))
    assert code == 27, lines
    assert lines[0].startswith("error: ") and source in lines[0]
    assert (locked / "pyproject.toml").read_bytes() == before


# --- places envlock must write that cannot be written ------------------------------------------------------------


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A folder with a locked project, then bound onto itself read-only (EROFS even for root); unbound afterwards."""
    project = tmp_path / "ro"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT)
    lock_project(load_spec(project), FakeResolver({"linux/amd64": [package("alpha", "1.0")]}))
    (project / "requirements.txt").write_text("alpha==1.0\nbeta\n")
    done = subprocess.run(["mount", "--bind", "-o", "ro", project, project], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount read-only here: {done.stderr.decode().strip()}")
    try:
        yield project
    finally:
        subprocess.run(["umount", "-l", project], check=False)


@pytest.mark.parametrize(
    ("argv", "meant"),
    [(("init", "--from", "requirements.txt"), "pyproject.toml"), (("sbom", "-o", "sbom.json"), "sbom.json")],
)
def test_a_read_only_project_is_one_line_exit_34_naming_the_file_meant(
    capsys: pytest.CaptureFixture[str], read_only: Path, argv: tuple[str, ...], meant: str
) -> None:
    before = sorted(p.name for p in read_only.iterdir())
    argv = tuple(str(read_only / a) if a == "sbom.json" else a for a in argv)
    code, lines = envlock(capsys, *argv, "-C", str(read_only))
    assert code == 34, lines
    assert lines[0].startswith(f"error: {read_only / meant} is on a read-only filesystem"), lines
    assert ".tmp" not in lines[0]  # the file meant, not the temp file beside it
    assert lines[-1].startswith("hint: ")
    assert sorted(p.name for p in read_only.iterdir()) == before


def test_a_file_where_a_folder_belongs_is_one_line_exit_34(capsys: pytest.CaptureFixture[str], locked: Path) -> None:
    (locked / "reports").write_text("a file, not a folder")
    code, lines = envlock(capsys, "sbom", "-C", str(locked), "-o", str(locked / "reports" / "sbom.json"))
    assert code == 34, lines
    assert "has a file where a folder belongs" in lines[0]
    assert (locked / "reports").read_text() == "a file, not a folder"


def test_a_cache_under_a_pseudo_filesystem_is_one_error(tmp_path: Path) -> None:
    """HOME=/proc: /proc is a folder, yet takes no new ones (mkdir answers ENOENT, which is no bug of envlock's)."""
    with pytest.raises(FileAccessError, match="takes no new folders") as caught:
        make_dirs(Path("/proc/envlock-cache/envlock/tmp"))
    assert caught.value.exit_code == 34
    assert "HOME" in caught.value.hint


def test_a_lock_file_in_a_folder_of_another_user_names_the_folder(tmp_path: Path) -> None:
    """A non-root user taking the gc lock of a cache it may not write: the folder is named, not a missing file."""
    if os.getuid() != 0 or shutil.which("setpriv") is None or not Path("/usr/bin/python3").exists():
        pytest.skip("needs root and setpriv to act as another user")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    script = (
        "import sys\nfrom pathlib import Path\nfrom envlock.fsutil import exclusive\n"
        "with exclusive(Path(sys.argv[1])):\n    pass\n"
    )
    done = subprocess.run(
        [
            "setpriv",
            "--reuid",
            "1234",
            "--regid",
            "1234",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
            cache / "gc.lock",
        ],
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert "PermissionError" in done.stderr and f"'{cache}'" in done.stderr, done.stderr


def test_permission_denied_on_the_engine_socket_is_said_so() -> None:
    """A user outside the docker group: not "is dockerd running?", but the socket and the group."""
    with pytest.raises(EngineUnreachableError) as caught, translated("inspect x"):
        raise requests.ConnectionError(("Connection aborted.", PermissionError(13, "Permission denied")))
    assert "permission denied on the Docker engine's socket" in caught.value.message
    assert "docker" in caught.value.hint and "group" in caught.value.hint
    assert caught.value.exit_code == 7


def test_sigterm_stops_envlock_as_ctrl_c_does() -> None:
    """`kill PID` (or Slurm's scancel): KeyboardInterrupt, so every command cleans up and exits 130, not 143."""
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode boundary: at once
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_sigterm_handler_someone_installed_is_kept() -> None:
    def theirs(_signum: int, _frame: FrameType | None) -> None:
        return

    previous = signal.signal(signal.SIGTERM, theirs)
    try:
        stop_on_sigterm()
        assert signal.getsignal(signal.SIGTERM) is theirs
    finally:
        signal.signal(signal.SIGTERM, previous)


class FullDiskEngine(FakeEngine):
    """An engine whose export meets a full disk on its way into the file (write() names no file)."""

    def save(self, ref: str, sink: Sink) -> None:
        sink.write(b"the first bytes of an export")
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_archiving_names_the_archive_and_leaves_no_part_of_it(tmp_path: Path) -> None:
    out = tmp_path / "archives" / "c3acda99c43f.tar"
    out.parent.mkdir()
    with pytest.raises(OSError) as caught:
        write_archive_file(FullDiskEngine(), "sha256:" + "c" * 64, out)
    assert caught.value.filename == str(out)
    assert list(out.parent.iterdir()) == []
    error = environment_error(caught.value, "running `envlock archive`")
    assert isinstance(error, DiskFullError)
    assert error.message.startswith(f"disk full while running `envlock archive`: cannot write {out} (")
    assert error.exit_code == 22


# --- run folders and records that are links --------------------------------------------------------------------

RECORDS = Path(__file__).parents[1] / "data" / "records"


def _orphan(folder: Path) -> str:
    """A record of a local run whose envlock died (status running, its pid gone), in `folder`; its run id."""
    data = json.loads((RECORDS / "v1-local-cpu.json").read_text(encoding="utf-8"))
    data.update(status="running", envlock_pid=2**22 + 1, ended=None, exit_code=None)
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps(data), encoding="utf-8")
    return str(data["run_id"])


def test_a_run_folder_that_is_a_link_out_of_the_project_is_never_written(
    capsys: pytest.CaptureFixture[str], locked: Path, tmp_path: Path
) -> None:
    """`envlock runs` marks orphaned runs interrupted: through a linked run folder that would write elsewhere."""
    elsewhere = tmp_path / "elsewhere"
    run_id = _orphan(elsewhere)
    (locked / ".envlock" / "runs").mkdir(parents=True)
    (locked / ".envlock" / "runs" / run_id).symlink_to(elsewhere)
    before = {p.name: p.read_bytes() for p in elsewhere.iterdir()}
    code, lines = envlock(capsys, "runs", "-C", str(locked))
    assert code == 0, lines
    assert any("skipped unreadable run record" in line and run_id in line for line in lines), lines
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == before
    with pytest.raises(RunNotFoundError):
        RunStore(locked).load(run_id)


def test_a_record_that_is_a_link_is_refused_and_left_alone(locked: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    run_id = _orphan(elsewhere)
    folder = locked / ".envlock" / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "record.json").symlink_to(elsewhere / "record.json")
    store = RunStore(locked)
    with pytest.raises(RunRecordError, match="is a symbolic link"):
        store.load(run_id)
    assert store.settle_orphans(lambda _container: None) == []
    assert json.loads((elsewhere / "record.json").read_text())["status"] == "running"


def test_a_removed_working_folder_is_one_line_exit_34(tmp_path: Path) -> None:
    """Every default path (the project `.`) is relative to it: "no pyproject.toml in ." would mislead."""
    gone = tmp_path / "gone"
    gone.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "envlock", "lock"],
        cwd=gone,
        preexec_fn=gone.rmdir,  # removed once the child stands in it
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 34, done.stderr
    assert done.stderr.splitlines() == [
        "error: the working folder was removed while running `envlock lock`",
        "hint: cd into an existing folder and run it again",
    ]


@pytest.mark.parametrize("kind", ["sparse-2g", "not-utf8"])  # a FIFO or a folder there is no pyproject.toml
def test_an_odd_pyproject_of_a_local_package_is_one_spec_error(tmp_path: Path, kind: str) -> None:
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "demo"\nversion = "0.1"\ndependencies = ["pkg @ file:pkg"]\n'
    )
    make_odd(project / "pkg" / "pyproject.toml", kind)
    with within(5), pytest.raises(SpecError) as caught:
        load_spec(project)
    assert WORDS[kind] in caught.value.message


class _Created:
    """A container the engine made, removable by name."""

    def __init__(self, made: dict[str, str], name: str) -> None:
        self.made = made
        self.name = name

    def remove(self, force: bool = False) -> None:
        del self.made[self.name]


class _CreatingApi:
    """The engine creates the container, and Ctrl-C arrives before its ID reaches envlock."""

    def __init__(self, made: dict[str, str]) -> None:
        self.made = made

    def create_host_config(self, **values: Any) -> dict[str, Any]:
        return values

    def create_container(self, image: str, command: list[str], *, name: str, **values: Any) -> dict[str, str]:
        self.made[name] = "being made"  # the request went out; the engine may answer before or after envlock looks
        raise KeyboardInterrupt


class _InterruptedClient:
    def __init__(self, late: bool) -> None:
        self.made: dict[str, str] = {}
        self.api = _CreatingApi(self.made)
        self.containers = self
        self.late = late  # the engine finishes the create only after envlock first looked for it

    def get(self, name: str) -> _Created:
        import docker.errors  # noqa: PLC0415  (docker-py's own NotFound, as the real client raises it)

        if self.made.get(name) == "being made" and self.late:
            self.made[name] = "created"
            raise docker.errors.NotFound(name)
        if name not in self.made:
            raise docker.errors.NotFound(name)
        return _Created(self.made, name)


@pytest.mark.parametrize("late", [False, True])
def test_ctrl_c_while_the_engine_creates_the_container_leaves_no_container(tmp_path: Path, late: bool) -> None:
    """The container exists before envlock holds its ID (or only a moment after the cut-off request): removed by its
    name, not left in state Created."""
    client = _InterruptedClient(late)
    spec = LaunchSpec("sha256:" + "e" * 64, ["sleep", "30"], "envlock-run-x", tmp_path, {}, "0:0", gpus=False)
    with pytest.raises(KeyboardInterrupt):
        DockerLauncher(client, precompile=False).run(spec, lambda _stream, _data: None)
    assert client.made == {}


def test_a_failing_mmdebstrap_that_hangs_up_its_group_does_not_end_envlock(tmp_path: Path) -> None:
    """mmdebstrap answers its own failure (a full cache disk) with SIGHUP to its whole process group: envlock must
    not be in it, or it dies with exit 129 and leaves its work folders behind instead of giving its one line."""
    fake = tmp_path / "bin" / "mmdebstrap"
    fake.parent.mkdir()
    fake.write_text(
        '#!/bin/sh\necho "E: cannot write: No space left on device" >&2\n'
        'kill -HUP -$(ps -o pgid= $$ | tr -d " ")\nexit 1\n'
    )
    fake.chmod(0o755)
    script = (
        "from pathlib import Path\n"
        "from envlock.errors import BuildError\n"
        "from envlock.image.bases import MmdebstrapBuilder\n"
        "from envlock.lock.recipes import load_recipe\n"
        "try:\n"
        "    MmdebstrapBuilder().build(load_recipe('debian-bookworm'), 'linux/amd64', Path('rootfs.tar'))\n"
        "except BuildError as exc:\n"
        "    print('refused:', exc.__class__.__name__, exc.message)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={
            **os.environ,
            "PATH": f"{fake.parent}:{os.environ['PATH']}",
            "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"),
        },
        capture_output=True,
        text=True,
        check=False,
        start_new_session=True,  # a hang-up of the group reaches this child's group only, never pytest
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.startswith(
        "refused: DiskFullError disk full while building base debian-bookworm for linux/amd64 with mmdebstrap: "
        "cannot write rootfs.tar ("
    ), done.stdout


def test_a_base_build_that_fails_on_a_nearly_full_disk_says_how_little_room_there_is(tmp_path: Path) -> None:
    """mmdebstrap --quiet says only "failed to run" when the disk fills: the hint names the room left."""
    if shutil.disk_usage(tmp_path).free < BASE_ROOM_BYTES:
        pytest.skip("this disk is nearly full itself")
    assert room_hint(tmp_path) == ""
    small = tmp_path / "small"
    small.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", small], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        work = small / ".building-1-abc-x"
        work.mkdir()
        assert room_hint(work).startswith(f"only 0 MiB free in {small}, and a base takes ~220 MB there")
    finally:
        subprocess.run(["umount", "-l", small], check=False)
