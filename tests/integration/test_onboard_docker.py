"""In the real engine: a package project's own metadata and console script, mlflow's overlapping wheels, and gc."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

pytestmark = [pytest.mark.docker, pytest.mark.network]
ENVLOCK = str(Path(sys.executable).with_name("envlock"))

PACKAGE = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "envlock-it-pkg"
version = "{version}"
dependencies = ["six==1.16.0"]

[project.scripts]
it-hello = "it_pkg.cli:main"
"""
CLI = """import importlib.metadata


def main() -> None:
    print("hello from it-pkg", importlib.metadata.version("envlock-it-pkg"), "{mark}")
"""


def envlock(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ENVLOCK, *args], capture_output=True, text=True, check=False)


@pytest.fixture
def cleanup() -> Iterator[list[str]]:
    """Repository names this test makes; their images are removed afterwards."""
    names: list[str] = []
    yield names
    client = docker.from_env()
    for name in names:
        for image in client.images.list(name=name):
            client.images.remove(image.id, force=True)


def _package(project: Path, version: str, mark: str) -> None:
    (project / "src" / "it_pkg").mkdir(parents=True, exist_ok=True)
    (project / "pyproject.toml").write_text(PACKAGE.format(version=version))
    (project / "src" / "it_pkg" / "__init__.py").write_text("")
    (project / "src" / "it_pkg" / "cli.py").write_text(CLI.format(mark=mark))


def _image_id(project: Path) -> str:
    done = envlock("build", "-C", str(project))
    assert done.returncode == 0, done.stderr
    return done.stdout.split("(")[-1].split(")")[0]


def test_the_projects_own_package_works_from_the_mounted_code(tmp_path: Path, cleanup: list[str]) -> None:
    cleanup.append("envlock-it-pkg")
    project = tmp_path / "pkg"
    _package(project, "1.4.0", "first")
    assert envlock("lock", "-C", str(project)).returncode == 0
    done = envlock("run", "-C", str(project), "--", "it-hello")
    assert done.returncode == 0, done.stderr
    assert "hello from it-pkg 1.4.0 first" in done.stdout
    image = _image_id(project)
    _package(project, "1.4.0", "edited")  # the code moves; the metadata does not
    assert envlock("lock", "--check", "-C", str(project)).returncode == 0
    assert _image_id(project) == image, "editing code never changes the image"
    done = envlock("run", "-C", str(project), "--", "python", "-c", "import it_pkg.cli as c; c.main()")
    assert "hello from it-pkg 1.4.0 edited" in done.stdout, done.stderr
    _package(project, "1.5.0", "edited")
    assert envlock("lock", "--check", "-C", str(project)).returncode == 4, "new metadata: the lock is stale"
    assert envlock("lock", "-C", str(project)).returncode == 0
    assert _image_id(project) != image
    assert "1.5.0" in envlock("run", "-C", str(project), "--", "it-hello").stdout


def test_a_project_on_mlflow_builds_despite_its_overlapping_wheels(tmp_path: Path, cleanup: list[str]) -> None:
    cleanup.append("envlock-it-mlflow")
    project = tmp_path / "mlflowproject"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "envlock-it-mlflow"\ndependencies = ["mlflow>=3.4,<4"]\n[tool.envlock]\ncuda = "cpu"\n'
    )
    assert envlock("lock", "-C", str(project)).returncode == 0
    done = envlock("build", "-C", str(project))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "warning: " in done.stderr and "mlflow" in done.stderr and "later wins" in done.stderr
    done = envlock(
        "run", "-C", str(project), "--", "python", "-c", "import mlflow; print('mlflow', mlflow.__version__)"
    )
    assert done.returncode == 0 and "mlflow 3." in done.stdout, done.stderr


def test_gc_removes_an_old_tags_image_and_layers_and_keeps_the_current_runs(
    tmp_path: Path, cleanup: list[str], isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cleanup.append("envlock-it-gc")
    # A cache of this test's own, with the session's bases linked in: gc here must not take the bases other tests
    # use (this project's lock needs only the host's; rebuilding the arm64 one under qemu costs minutes).
    cache = tmp_path / "cache"
    if (isolated_cache / "bases").is_dir():
        shutil.copytree(isolated_cache / "bases", cache / "bases", copy_function=os.link)
    monkeypatch.setenv("ENVLOCK_CACHE_DIR", str(cache))
    project = tmp_path / "gcproject"
    project.mkdir()
    pyproject = '[project]\nname = "envlock-it-gc"\ndependencies = ["{dep}"]\n'
    (project / "pyproject.toml").write_text(pyproject.format(dep="six==1.15.0"))
    assert envlock("lock", "-C", str(project)).returncode == 0
    old = _image_id(project)
    (project / "pyproject.toml").write_text(pyproject.format(dep="six==1.16.0"))
    assert envlock("lock", "-C", str(project)).returncode == 0
    done = envlock("run", "-C", str(project), "--", "python", "-c", "import six")
    assert done.returncode == 0, done.stderr
    current = _image_id(project)
    client = docker.from_env()
    # Young entries are spared (a build may be running beside gc): age the cache as if it were made long ago.
    past = time.time() - 7200
    for path in cache.rglob("*"):
        if path.is_file():
            os.utime(path, (past, past))
    done = envlock("gc", "-C", str(project))
    assert done.returncode == 0, done.stderr
    assert "removing image envlock-it-gc:" in done.stdout and "freed" in done.stdout
    ids = {image.id for image in client.images.list()}
    assert old not in ids and current in ids
    assert "removing layer" in done.stdout
    done = envlock("run", "-C", str(project), "--", "python", "-c", "import six; print(six.__version__)")
    assert done.returncode == 0 and "1.16.0" in done.stdout, done.stderr
