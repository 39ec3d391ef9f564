"""The project's own package, whatever declares it: metadata from its build backend (real, in-tree, no network)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from envlock.errors import ImportSourceError, SpecError
from envlock.lock.backend import BackendMetadata, BuildBackendError, IsolatedBackend
from envlock.lock.onboard import init_project
from envlock.lock.spec import load_spec
from tests.fakes import FakeMetadataSource

# A PEP 517 backend inside the project (backend-path): no build requirement to fetch, so no network. It reads its
# version from VERSION and counts its calls in CALLS, beside the project.
IN_TREE_BACKEND = """import pathlib

def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    here = pathlib.Path.cwd()
    calls = here.parent / "CALLS"
    calls.write_text(calls.read_text() + "x" if calls.exists() else "x")
    version = (here / "VERSION").read_text().strip()
    if version == "broken":
        raise ValueError("broken metadata in VERSION")
    info = pathlib.Path(metadata_directory) / f"intree_pkg-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\\nName: intree-pkg\\nVersion: {version}\\nRequires-Dist: six==1.16.0\\n"
        "Requires-Dist: pytest ; extra == 'dev'\\n"
    )
    (info / "entry_points.txt").write_text("[console_scripts]\\nintree-hello = intree_pkg.cli:main\\n")
    return info.name

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise NotImplementedError
"""
PYPROJECT = """[build-system]
requires = []
build-backend = "intree"
backend-path = ["."]

[project]
name = "intree-pkg"
dynamic = ["version", "dependencies", "scripts"]

[tool.envlock]
"""


def _in_tree(tmp_path: Path, version: str) -> Path:
    project = tmp_path / "folder-name"
    (project / "src" / "intree_pkg").mkdir(parents=True)
    (project / "src" / "intree_pkg" / "__init__.py").write_text("")
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / "intree.py").write_text(IN_TREE_BACKEND)
    (project / "VERSION").write_text(version)
    return project


def test_a_dynamic_package_gets_its_backends_metadata_cached_until_its_files_move(tmp_path: Path) -> None:
    project = _in_tree(tmp_path, "3.1.4")
    backend = IsolatedBackend(tmp_path / "cache")
    spec = load_spec(project, backend)
    (package,) = spec.local_packages
    assert (package.name, package.version, package.path, package.backend) == ("intree-pkg", "3.1.4", "src", "intree")
    assert package.entry_points == (("console_scripts", "intree-hello", "intree_pkg.cli:main"),)
    assert spec.requirements == ("six==1.16.0",), "its dependencies are locked; an extra's are not"
    assert spec.name == "intree-pkg"
    assert load_spec(project, backend).input_hash() == spec.input_hash()
    assert (tmp_path / "CALLS").read_text() == "x", "the second load came from the cache"
    (project / "src" / "intree_pkg" / "__init__.py").write_text('__version__ = "3.2.0"\n')  # a version file moved
    (project / "VERSION").write_text("3.2.0")
    again = load_spec(project, backend)
    assert again.local_packages[0].version == "3.2.0" and again.input_hash() != spec.input_hash()
    assert sorted(p.name for p in project.iterdir()) == ["VERSION", "intree.py", "pyproject.toml", "src"]


def test_a_failing_backend_is_one_error_naming_it_and_its_message(tmp_path: Path) -> None:
    project = _in_tree(tmp_path, "broken")
    with pytest.raises(BuildBackendError) as caught:
        load_spec(project, IsolatedBackend(tmp_path / "cache"))
    assert caught.value.message == (
        f"the build backend intree failed on {project}: ValueError: broken metadata in VERSION"
    )
    assert isinstance(caught.value, SpecError) and caught.value.exit_code == 20


def test_a_missing_backend_module_is_named(tmp_path: Path) -> None:
    project = _in_tree(tmp_path, "1.0")
    (project / "pyproject.toml").write_text(PYPROJECT.replace('"intree"', '"nosuch_backend"'))
    with pytest.raises(BuildBackendError) as caught:
        load_spec(project, IsolatedBackend(tmp_path / "cache"))
    assert caught.value.message.startswith("the build backend nosuch_backend cannot be used: ")


def _answer(name: str, version: str, requires: tuple[str, ...] = ()) -> BackendMetadata:
    scripts = (("console_scripts", f"{name}-hello", "x.cli:main"),)
    return BackendMetadata(name, version, requires, scripts, "setuptools.build_meta", ("setuptools==80.0.0",))


def test_a_setup_py_only_project_onboards_with_init_alone(tmp_path: Path) -> None:
    project = tmp_path / "checkout"
    (project / "src" / "acme").mkdir(parents=True)
    (project / "setup.py").write_text(
        'from setuptools import setup, find_packages\nsetup(name="acme-tools", package_dir={"": "src"}, '
        'packages=find_packages("src"))\n'
    )
    outcome = init_project(project)
    assert outcome.changes == (
        "+ [tool.envlock] (empty: the project's own package, as setup.py declares it, and its dependencies are "
        "installed)",
    )
    assert init_project(project, project / "setup.py").changes == (), "--from setup.py: the same, nothing new"
    backend = FakeMetadataSource({"checkout": _answer("acme-tools", "0.3.1", ("six==1.16.0",))})
    spec = load_spec(project, backend)
    (package,) = spec.local_packages
    assert (package.name, package.path, package.build_requires) == ("acme-tools", "src", ("setuptools==80.0.0",))
    assert spec.name == "acme-tools" and spec.requirements == ("six==1.16.0",)
    assert "build-requires" not in spec.inputs()["local-packages"][0], "another machine's setuptools: same lock"


def test_a_poetry_package_lives_where_its_packages_from_says(tmp_path: Path) -> None:
    project = tmp_path / "poetry-proj"
    (project / "lib" / "shapepoetry").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[tool.poetry]\nname = "shape-poetry"\nversion = "1.1.0"\n'
        'packages = [{include = "shapepoetry", from = "lib"}]\n\n'
        '[build-system]\nrequires = ["poetry-core"]\nbuild-backend = "poetry.core.masonry.api"\n'
    )
    assert init_project(project).written
    spec = load_spec(project, FakeMetadataSource({"poetry-proj": _answer("shape-poetry", "1.1.0")}))
    assert [(p.name, p.version, p.path) for p in spec.local_packages] == [("shape-poetry", "1.1.0", "lib")]
    assert spec.requirements == ()


def test_a_folder_that_is_no_package_still_has_nothing_to_import(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print(1)\n")
    with pytest.raises(ImportSourceError) as caught:
        init_project(tmp_path)
    assert "nothing to import" in caught.value.message and "setup.py" in caught.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.py"]


def test_the_tag_decides_a_git_versioned_fingerprint(tmp_path: Path) -> None:
    from envlock.lock.backend import build_system, fingerprint  # noqa: PLC0415

    project = _in_tree(tmp_path, "1.0")
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    for args in (["add", "."], ["-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "one"]):
        subprocess.run(["git", "-C", str(project), *args], check=True)
    system = build_system({})
    before = fingerprint(project, system)
    subprocess.run(["git", "-C", str(project), "tag", "v1.0"], check=True)
    assert fingerprint(project, system) != before
