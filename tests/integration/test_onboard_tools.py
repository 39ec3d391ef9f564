"""`envlock init` on real tools' outputs: a real `uv lock`, a real poetry.lock and Pipfile.lock, a requirements-only
project.

The first `envlock lock` after `init` must give exactly the source lock's versions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from envlock.lock import lockfile
from envlock.lock.spec import load_spec

pytestmark = pytest.mark.network
ENVLOCK = str(Path(sys.executable).with_name("envlock"))
UV = str(Path(sys.executable).with_name("uv"))
POETRY_PROJECT = Path(__file__).parents[1] / "data" / "imports" / "poetry-project"
PIPENV_PROJECT = Path(__file__).parents[1] / "data" / "imports" / "pipenv-project"
CONDA = Path(__file__).parents[1] / "data" / "conda"


def envlock(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ENVLOCK, *args], capture_output=True, text=True, check=False)


def locked_versions(project: Path) -> dict[str, str]:
    lock = lockfile.read(project / "envlock.lock")
    return {p.name: p.version for p in lock.target("linux/amd64").packages}


def init_and_lock(project: Path) -> dict[str, str]:
    done = envlock("init", "-C", str(project))
    assert done.returncode == 0, done.stderr
    again = envlock("init", "-C", str(project))
    assert again.returncode == 0 and "nothing changed" in again.stdout, again.stdout
    done = envlock("lock", "-C", str(project))
    assert done.returncode == 0, done.stderr
    return locked_versions(project)


def test_a_real_uv_lock_is_taken_over_with_its_exact_versions(tmp_path: Path) -> None:
    project = tmp_path / "uvproject"
    project.mkdir()
    # Old upper bounds on purpose: uv's pins are older than what a fresh resolution would pick.
    (project / "pyproject.toml").write_text(
        '[project]\nname = "uvproject"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["requests>=2.20,<2.32", "tabulate"]\n\n'
        '# a comment init must keep\n[tool.uv]\nexclude-newer = "2024-06-01T00:00:00Z"\n'
    )
    done = subprocess.run([UV, "lock", "--directory", str(project)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    uv_lock = tomllib.loads((project / "uv.lock").read_text())
    theirs = {
        str(canonicalize_name(p["name"])): p["version"] for p in uv_lock["package"] if "registry" in p.get("source", {})
    }
    ours = init_and_lock(project)
    assert "# a comment init must keep" in (project / "pyproject.toml").read_text()
    assert ours == {name: theirs[name] for name in ours}
    assert set(ours) == set(theirs), "uv's universal lock has no extra platform-only packages here"


def test_a_real_poetry_lock_is_taken_over_with_its_exact_versions(tmp_path: Path) -> None:
    project = tmp_path / "poetryproject"
    shutil.copytree(POETRY_PROJECT, project)
    poetry_lock = tomllib.loads((project / "poetry.lock").read_text())
    theirs = {str(canonicalize_name(p["name"])): p["version"] for p in poetry_lock["package"] if "main" in p["groups"]}
    ours = init_and_lock(project)
    assert ours == {name: theirs[name] for name in ours} and set(ours) == set(theirs)


def test_a_real_pipfile_lock_is_taken_over_with_its_exact_versions(tmp_path: Path) -> None:
    project = tmp_path / "pipenvproject"
    shutil.copytree(PIPENV_PROJECT, project)
    pipfile_lock = json.loads((project / "Pipfile.lock").read_text())
    theirs = {str(canonicalize_name(n)): e["version"].removeprefix("==") for n, e in pipfile_lock["default"].items()}
    ours = init_and_lock(project)
    assert ours == theirs, "every default pin, nothing from develop (pytest)"
    assert load_spec(project).requirements == ("requests~=2.31.0", "tabulate"), "the Pipfile's [packages]"


def test_a_requirements_only_project(tmp_path: Path) -> None:
    project = tmp_path / "reqsonly"
    project.mkdir()
    (project / "requirements.txt").write_text("-r base.txt\ntabulate==0.8.10\n")
    (project / "base.txt").write_text(
        "six==1.15.0 --hash=sha256:8b74bedcbbbaca38ff6d7491d76f2b06b3592611af620f8426e82dddb04a5ced\n"
    )
    ours = init_and_lock(project)
    assert ours == {"six": "1.15.0", "tabulate": "0.8.10"}
    assert envlock("lock", "--check", "-C", str(project)).returncode == 0


@pytest.mark.parametrize("name", ["science.yml", "exported.yml"])
def test_a_conda_environment_locks_every_package_it_names_from_pypi(tmp_path: Path, name: str) -> None:
    """The translated names exist on PyPI and the versions conda asked for are the versions locked."""
    project = tmp_path / "condaproject"
    project.mkdir()
    shutil.copy(CONDA / name, project / "environment.yml")
    ours = init_and_lock(project)
    wanted = load_spec(project).requirements
    for requirement in map(Requirement, wanted):
        name_ = canonicalize_name(requirement.name)
        assert name_ in ours, f"{requirement} is not in the lock"
        assert requirement.specifier.contains(ours[name_]), (requirement, ours[name_])


def test_a_requirements_file_changed_after_init_is_followed_by_lock(tmp_path: Path) -> None:
    project = tmp_path / "follows"
    project.mkdir()
    (project / "requirements.txt").write_text("tabulate==0.8.10\n")
    assert init_and_lock(project) == {"tabulate": "0.8.10"}
    (project / "requirements.txt").write_text("tabulate==0.9.0\n")
    checked = envlock("lock", "--check", "-C", str(project))
    assert checked.returncode == 4
    assert checked.stderr.splitlines()[0] == "error: requirements.txt changed since it was imported: run `envlock lock`"
    done = envlock("lock", "-C", str(project))
    assert done.returncode == 0, done.stderr
    assert "  ~ requirements: tabulate==0.8.10 -> tabulate==0.9.0" in done.stdout.splitlines()
    assert locked_versions(project) == {"tabulate": "0.9.0"}
    assert envlock("lock", "--check", "-C", str(project)).returncode == 0
