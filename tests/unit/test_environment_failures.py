"""The environment failing under envlock's feet (odd files where small ones are expected, read-only or full places,
an engine that cannot be reached, signals): one line with a hint and the table's code, never a traceback or a hang."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from envlock.cli.app import run
from envlock.fsutil import read_small, read_small_text, unreadable
from envlock.lock.project import lock_project
from envlock.lock.spec import load_spec
from tests.fakes import FakeResolver, package

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


@pytest.mark.parametrize("kind", ODD)
def test_an_odd_requirements_file_to_import_is_one_line_exit_27(
    capsys: pytest.CaptureFixture[str], locked: Path, kind: str
) -> None:
    make_odd(locked / "requirements.txt", kind)
    before = (locked / "pyproject.toml").read_bytes()
    code, lines = envlock(capsys, "init", "--from", "requirements.txt", "-C", str(locked))
    assert code == 27, lines
    assert lines[0].startswith("error: ") and "requirements.txt" in lines[0]
    assert (locked / "pyproject.toml").read_bytes() == before
