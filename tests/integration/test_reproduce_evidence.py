"""reproduce on real git projects and the real engine: untracked code and gitignored inputs come back, a failure is
never REPRODUCED, a dirty run reproduces from `-C .`, and HOME is writable for any uid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import docker
import pytest

from envlock.engine.launch import DockerLauncher, LaunchSpec, home_env
from envlock.run.records import RunStore
from tests.integration.example import digits_repo, git

pytestmark = [pytest.mark.docker]
ENVLOCK = str(Path(sys.executable).with_name("envlock"))
READER = """import json, os
import helper
rows = open("data/x.csv").read().splitlines()
os.makedirs("out", exist_ok=True)
json.dump({"rows": len(rows), "scale": helper.SCALE}, open("out/result.json", "w"))
"""


def verdict_of(stdout: str) -> str:
    """The verdict's first word(s): the command's own output comes first on stdout."""
    heads = [line.split(":")[0] for line in stdout.splitlines() if " re-ran " in line]
    assert heads, stdout
    return heads[-1]


def envlock(project: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    where = [] if cwd else ["-C", str(project)]
    command = [ENVLOCK, args[0], *where, *args[1:]]
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=cwd)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The CPU example with its committed lock (its image is built once and kept), plus a reader of data/."""
    project = digits_repo(tmp_path / "digits")
    (project / ".gitignore").write_text("out/\n.envlock/\ndata/\n")
    (project / "reader.py").write_text(READER)
    git(project, "add", ".")
    git(project, "commit", "-qm", "reader")
    return project


def test_untracked_helper_and_ignored_data_come_back_and_an_edit_is_named(repo: Path) -> None:
    (repo / "helper.py").write_text("SCALE = 3\n")
    (repo / "data").mkdir()
    (repo / "data" / "x.csv").write_text("a,b\n1,2\n3,4\n")
    ran = envlock(repo, "run", "--input", "data", "-o", "out/result.json", "--", "python", "reader.py")
    assert ran.returncode == 0, ran.stderr
    (original,) = RunStore(repo).all()
    assert original.git is not None and "helper.py" in original.git.saved
    assert original.inputs is not None and list(original.inputs.files) == ["data/x.csv"]

    git(repo, "clean", "-fq")  # the untracked helper is gone; ignored data and .envlock/ stay
    assert not (repo / "helper.py").exists()
    verdict = envlock(repo, "reproduce", original.run_id)
    assert verdict.returncode == 0 and verdict_of(verdict.stdout) == "REPRODUCED", verdict.stdout + verdict.stderr
    assert "output out/result.json: identical" in verdict.stdout and "inputs (1 files)" in verdict.stdout

    (repo / "data" / "x.csv").write_text("a,b\n1,2\n")
    verdict = envlock(repo, "reproduce", original.run_id)
    assert verdict.returncode == 16 and verdict_of(verdict.stdout) == "NOT REPRODUCED", verdict.stdout + verdict.stderr
    assert "input data/x.csv: changed" in verdict.stdout


def test_a_command_that_exits_3_is_never_reproduced(repo: Path) -> None:
    ran = envlock(repo, "run", "--", "python", "-c", "import sys; print('bad'); sys.exit(3)")
    assert ran.returncode == 3, ran.stderr
    (original,) = RunStore(repo).all()
    verdict = envlock(repo, "reproduce", original.run_id)
    assert verdict.returncode == 25 and verdict_of(verdict.stdout) == "FAILURE REPRODUCED", verdict.stdout
    assert "log (no output to compare): identical" in verdict.stdout


def test_a_dirty_run_reproduces_with_the_default_project_dir(repo: Path) -> None:
    train = repo / "train.py"
    train.write_text(train.read_text() + "\n# an uncommitted change\n")
    ran = envlock(repo, "run", "--output", "out", "--", "python", "train.py", "--out", "out", cwd=repo)
    assert ran.returncode == 0, ran.stderr
    (dirty,) = RunStore(repo).all()
    git(repo, "checkout", "--", "train.py")
    verdict = envlock(repo, "reproduce", dirty.run_id, cwd=repo)
    assert verdict.returncode == 0 and verdict_of(verdict.stdout) == "REPRODUCED", verdict.stdout + verdict.stderr
    assert "+ diff" in verdict.stdout


def test_home_is_writable_for_a_uid_that_is_not_root(repo: Path) -> None:
    ran = envlock(repo, "run", "--", "true")
    assert ran.returncode == 0, ran.stderr
    (record,) = RunStore(repo).all()
    assert record.environment["HOME"] == home_env()["HOME"]
    script = 'mkdir -p "$XDG_CACHE_HOME/torch" && echo ok > "$HOME/.cache/torch/probe" && id -u && ' + (
        'cat "$XDG_CACHE_HOME/torch/probe"'
    )
    out: list[bytes] = []
    spec = LaunchSpec(
        image_id=record.image_id,
        command=["sh", "-c", script],
        name=f"envlock-home-{record.run_id}",
        project_dir=repo,
        environment=home_env(),
        user="4242:4242",
        gpus=False,
    )
    code = DockerLauncher(docker.from_env()).run(spec, lambda _stream, data: out.append(data))
    assert code == 0, b"".join(out)
    assert b"".join(out).split() == [b"4242", b"ok"]
