"""In the real engine: a package project's own metadata and console script, mlflow's overlapping wheels, and gc."""

from __future__ import annotations

import json
import os
import re
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
    # mlflow, mlflow-skinny and mlflow-tracing share ~1300 files, byte for byte: one note naming them, no warning
    # per pair (a copy with other bytes would be warned about, naming which copy the image keeps: test_overlaps).
    (note,) = [line for line in done.stderr.splitlines() if line.startswith("note: ") and "identical bytes" in line]
    assert "mlflow" in note and "warning: " not in done.stderr
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


def test_gc_frees_the_build_backends_metadata_of_an_old_version_and_keeps_what_the_package_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("ENVLOCK_CACHE_DIR", str(cache))
    project = tmp_path / "pkg"
    _package(project, "0", "first")
    # A version only the backend knows (hatch reads it from __about__.py): envlock asks it, and caches the answer.
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace('version = "0"', 'dynamic = ["version"]')
        + '\n[tool.hatch.version]\npath = "src/it_pkg/__about__.py"\n'
    )
    about = project / "src" / "it_pkg" / "__about__.py"
    about.write_text('__version__ = "1.4.0"\n')
    done = envlock("lock", "-C", str(project))
    assert done.returncode == 0, done.stderr
    about.write_text('__version__ = "1.5.0"\n')  # a version file moved: the backend is asked again, a second entry
    assert envlock("lock", "-C", str(project)).returncode == 0
    metadata, envs = cache / "build-backends" / "metadata", cache / "build-backends" / "envs"
    assert len(list(metadata.iterdir())) == 2 and len(list(envs.iterdir())) == 1
    past = time.time() - 7200  # past the grace period
    for path in (cache / "build-backends").rglob("*"):
        os.utime(path, (past, past), follow_symlinks=False)
    dry = envlock("gc", "--dry-run", "-C", str(project))
    assert dry.returncode == 0 and "would remove backend-metadata " in dry.stdout, dry.stdout + dry.stderr
    assert len(list(metadata.iterdir())) == 2
    done = envlock("gc", "-C", str(project))
    assert done.returncode == 0 and done.stdout.count("removing backend-") == 1, done.stdout + done.stderr
    (kept,) = metadata.iterdir()
    assert '"version": "1.5.0"' in kept.read_text() and len(list(envs.iterdir())) == 1
    assert envlock("lock", "--check", "-C", str(project)).returncode == 0
    assert list(metadata.iterdir()) == [kept], "the kept entry answered: the backend was not asked again"


# --- the project's own package, whatever declares it: each from a fresh clone through envlock commands only ---

SETUP_PY = """from setuptools import find_packages, setup

setup(
    name="shape-setup",
    version="0.3.1",
    packages=find_packages(exclude=["tests"]),
    install_requires=["six==1.16.0"],
    entry_points={"console_scripts": ["shape-setup-hello = shapesetup.cli:main"]},
)
"""
SETUP_CFG = """[metadata]
name = shape-editable
version = attr: shapeedit.__version__

[options]
packages = find:
install_requires = six==1.16.0

[options.entry_points]
console_scripts =
    shape-editable-hello = shapeedit.cli:main
"""
POETRY = """[tool.poetry]
name = "shape-poetry"
version = "1.1.0"
description = "a src-layout Poetry package"
authors = ["envlock tests <tests@example.invalid>"]
packages = [{include = "shapepoetry", from = "src"}]

[tool.poetry.dependencies]
python = ">=3.9"

[tool.poetry.scripts]
shape-poetry-hello = "shapepoetry.cli:main"

[build-system]
requires = ["poetry-core>=1.9"]
build-backend = "poetry.core.masonry.api"
"""
SCM = """[build-system]
requires = ["setuptools>=64", "setuptools-scm>=8"]
build-backend = "setuptools.build_meta"

[project]
name = "shape-scm"
dynamic = ["version"]
dependencies = ["six==1.16.0"]

[project.scripts]
shape-scm-hello = "shapescm.cli:main"

[tool.setuptools_scm]
"""
HELLO = "import importlib.metadata\n\n\ndef main() -> None:\n    print('hello', importlib.metadata.version({!r}))\n"


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def _clone(tmp_path: Path, files: dict[str, str], folder: str = "clone") -> Path:
    """A fresh clone of a repository holding `files` (git clone, as a newcomer starts) into `folder`."""
    origin = tmp_path / "origin"
    for name, text in files.items():
        (origin / name).parent.mkdir(parents=True, exist_ok=True)
        (origin / name).write_text(text)
    git(origin.parent, "init", "-q", str(origin))
    git(origin, "add", ".")
    git(origin, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "start")
    git(origin, "tag", "v1.4.2")
    subprocess.run(["git", "clone", "-q", str(origin), str(tmp_path / folder)], check=True)
    git(tmp_path / folder, "config", "user.name", "t")
    git(tmp_path / folder, "config", "user.email", "t@example.invalid")
    return tmp_path / folder


def _timed(timings: dict[str, float], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    done = subprocess.run([ENVLOCK, *args], capture_output=True, text=True, check=False, cwd=cwd)
    timings[" ".join(args)[:24]] = round(time.monotonic() - started, 1)
    return done


def _onboard(repo: Path, module: str, dist: str, script: str, version: str, cleanup: list[str]) -> dict[str, float]:
    """init, lock, run (import + version from tests/, the console script), reproduce: the timings of each."""
    cleanup.append(dist)
    timings: dict[str, float] = {}
    done = _timed(timings, "init", cwd=repo)
    assert done.returncode == 0, done.stdout + done.stderr
    git(repo, "add", "pyproject.toml")  # what init says to commit (the lock follows once written)
    git(repo, "commit", "-qm", "envlock init")
    done = _timed(timings, "lock", cwd=repo)
    assert done.returncode == 0, done.stdout + done.stderr
    probe = f"import {module}, importlib.metadata; print(importlib.metadata.version({dist!r}), {module}.__file__)"
    done = _timed(timings, "run", "--", "sh", "-c", f"cd tests && python -c {probe!r}", cwd=repo)
    assert done.returncode == 0, done.stdout + done.stderr
    printed, where = done.stdout.split()
    assert re.fullmatch(version, printed), done.stdout
    assert where.startswith("/work/") and where.endswith(f"{module}/__init__.py"), "imported from the mounted code"
    done = _timed(timings, "run", "--", script, cwd=repo)
    assert done.returncode == 0 and done.stdout.strip() == f"hello {printed}", done.stdout + done.stderr
    run_id = done.stderr.split("run ")[-1].split(":")[0]
    verdict = _timed(timings, "reproduce", run_id, cwd=repo)  # the run's id, as `envlock runs` lists it
    assert verdict.returncode == 0 and "REPRODUCED" in verdict.stdout, verdict.stdout + verdict.stderr
    assert docker.from_env().images.list(name=dist), "the image is named after the package, not the folder"
    print(f"\n{dist}: " + ", ".join(f"{k} {v}s" for k, v in timings.items()))
    return timings


def test_a_setup_py_only_package_onboards_with_init_alone(tmp_path: Path, cleanup: list[str]) -> None:
    repo = _clone(
        tmp_path,
        {
            "setup.py": SETUP_PY,
            "shapesetup/__init__.py": "",
            "shapesetup/cli.py": HELLO.format("shape-setup"),
            "tests/test_it.py": "",
        },
    )
    _onboard(repo, "shapesetup", "shape-setup", "shape-setup-hello", r"0\.3\.1", cleanup)


def test_e_dot_in_requirements_with_a_setup_cfg_and_an_attr_version(tmp_path: Path, cleanup: list[str]) -> None:
    repo = _clone(
        tmp_path,
        {
            "requirements.txt": "-e .\nidna==3.10\n",
            "setup.cfg": SETUP_CFG,
            "setup.py": "from setuptools import setup\n\nsetup()\n",
            "shapeedit/__init__.py": '__version__ = "2.0.5"\n',
            "shapeedit/cli.py": HELLO.format("shape-editable"),
            "tests/test_it.py": "",
        },
    )
    _onboard(repo, "shapeedit", "shape-editable", "shape-editable-hello", r"2\.0\.5", cleanup)
    lock = (repo / "envlock.lock").read_text()
    assert 'name = "idna"' in lock and 'name = "six"' in lock, "the file's lines and the package's dependencies"


def test_a_poetry_package_from_src(tmp_path: Path, cleanup: list[str]) -> None:
    repo = _clone(
        tmp_path,
        {
            "pyproject.toml": POETRY,
            "src/shapepoetry/__init__.py": "",
            "src/shapepoetry/cli.py": HELLO.format("shape-poetry"),
            "tests/test_it.py": "",
        },
    )
    _onboard(repo, "shapepoetry", "shape-poetry", "shape-poetry-hello", r"1\.1\.0", cleanup)


def test_a_setuptools_scm_version_is_the_commits_and_committing_the_lock_leaves_it_fresh(
    tmp_path: Path, cleanup: list[str]
) -> None:
    repo = _clone(
        tmp_path,
        {
            "pyproject.toml": SCM,
            "src/shapescm/__init__.py": "",
            "src/shapescm/cli.py": HELLO.format("shape-scm"),
            "tests/test_it.py": "",
        },
    )
    # Tagged v1.4.2, then init's commit: setuptools-scm says the next dev version of that commit.
    _onboard(repo, "shapescm", "shape-scm", "shape-scm-hello", r"1\.4\.3\.dev1\+g[0-9a-f]+", cleanup)
    image = _image_id(repo)
    git(repo, "add", "envlock.lock")
    git(repo, "commit", "-qm", "lock")
    assert envlock("lock", "--check", "-C", str(repo)).returncode == 0, "committing the lock leaves it fresh"
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    done = envlock("run", "-C", str(repo), "--", "shape-scm-hello")
    printed = done.stdout.strip().removeprefix("hello ")
    assert done.returncode == 0 and re.fullmatch(r"1\.4\.3\.dev2\+g[0-9a-f]{7,}", printed), done.stdout
    assert head.stdout.startswith(printed.split("+g")[1]), "the version of the commit that ran"
    assert _image_id(repo) == image, "the image does not depend on the commit"
    run_id = done.stderr.split("run ")[-1].split(":")[0]
    record = (repo / ".envlock" / "runs" / run_id / "record.json").read_text()
    assert f'"shape-scm": "{printed}"' in record, "the record names the version that ran"
    verdict = envlock("reproduce", "-C", str(repo), run_id)
    assert verdict.returncode == 0 and "REPRODUCED" in verdict.stdout, verdict.stdout + verdict.stderr
    git(repo, "tag", "v1.5.0")
    assert envlock("lock", "--check", "-C", str(repo)).returncode == 0, "a new tag is a new version, not a new lock"
    done = envlock("run", "-C", str(repo), "--", "shape-scm-hello")
    assert done.returncode == 0 and done.stdout.strip() == "hello 1.5.0", done.stdout + done.stderr


# A conda environment as people write it: a dozen scientific packages, three under conda names PyPI spells otherwise
# (matplotlib-base, msgpack-python, python-graphviz), one conda-only package, and a pip section. Light enough for CI:
# about 100 MB of wheels, numpy/scipy/pandas/scikit-learn/matplotlib the heavy ones.
ENVIRONMENT = """name: shape-conda
channels:
  - conda-forge
  - defaults
dependencies:
  - python=3.11
  - pip
  - numpy=1.26
  - pandas>=2.1
  - scipy
  - scikit-learn
  - matplotlib-base
  - joblib
  - pyyaml
  - requests
  - tqdm
  - click
  - msgpack-python
  - python-graphviz
  - conda-forge::ffmpeg
  - pip:
      - tabulate==0.9.0
"""
TRAIN = """import importlib.metadata
import json
import pathlib

import click, graphviz, joblib, matplotlib, msgpack, numpy, pandas, requests, scipy, tabulate, tqdm, yaml
from sklearn.linear_model import LinearRegression

x = numpy.arange(10.0).reshape(-1, 1)
model = LinearRegression().fit(x, 2 * x.ravel() + 1)
pathlib.Path("out").mkdir(exist_ok=True)
fit = {"coef": round(float(model.coef_[0]), 6), "rows": len(pandas.DataFrame(x))}
pathlib.Path("out/fit.json").write_text(json.dumps(fit, sort_keys=True))
for dist in ("numpy", "matplotlib", "msgpack", "graphviz", "tabulate"):
    print(dist, importlib.metadata.version(dist))
"""


def test_a_conda_environment_file_onboards_runs_and_reproduces(tmp_path: Path, cleanup: list[str]) -> None:
    cleanup.append("shape-conda")
    repo = _clone(tmp_path, {"environment.yml": ENVIRONMENT, "train.py": TRAIN}, folder="shape-conda")
    timings: dict[str, float] = {}
    done = _timed(timings, "init", cwd=repo)
    assert done.returncode == 0, done.stdout + done.stderr
    added = {line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith("  + requirements: ")}
    assert added == {
        "numpy==1.26.*",
        "pandas>=2.1",
        "scipy",
        "scikit-learn",
        "matplotlib",
        "joblib",
        "pyyaml",
        "requests",
        "tqdm",
        "click",
        "msgpack",
        "graphviz",
        "tabulate==0.9.0",
    }, done.stdout
    assert (
        "  not handled: conda-forge::ffmpeg (conda-only; instead: Debian ffmpeg in system-packages, "
        "or PyPI imageio-ffmpeg in requirements)" in done.stdout.splitlines()
    ), done.stdout
    assert '  + python = "3.11"' in done.stdout.splitlines()
    git(repo, "add", "pyproject.toml")
    git(repo, "commit", "-qm", "envlock init")
    done = _timed(timings, "lock", cwd=repo)
    assert done.returncode == 0, done.stdout + done.stderr
    lock = (repo / "envlock.lock").read_text()
    for name in ("numpy", "matplotlib", "msgpack", "graphviz", "scikit-learn", "tabulate"):
        assert f'name = "{name}"' in lock, name
    done = _timed(timings, "run", "--output", "out", "--", "python", "train.py", cwd=repo)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stderr, done.stderr
    versions = {dist: version for dist, version in (line.split() for line in done.stdout.splitlines())}
    assert re.fullmatch(r"1\.26\.\d+", versions["numpy"]) and versions["tabulate"] == "0.9.0", done.stdout
    assert set(versions) == {"numpy", "matplotlib", "msgpack", "graphviz", "tabulate"}
    assert json.loads((repo / "out" / "fit.json").read_text()) == {"coef": 2.0, "rows": 10}
    run_id = done.stderr.split("run ")[-1].split(":")[0]
    verdict = _timed(timings, "reproduce", run_id, cwd=repo)
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    assert verdict.stdout.startswith("numpy 1.26.") and "\nREPRODUCED: run " in verdict.stdout
    assert "  output out/fit.json: identical" in verdict.stdout.splitlines(), verdict.stdout
    assert docker.from_env().images.list(name="shape-conda")
    print("\nshape-conda: " + ", ".join(f"{k} {v}s" for k, v in timings.items()))
