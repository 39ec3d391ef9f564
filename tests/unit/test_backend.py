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


def test_the_tag_decides_the_run_time_version_key_and_never_the_locks(tmp_path: Path) -> None:
    from envlock.lock.backend import build_system, fingerprint  # noqa: PLC0415

    project = _in_tree(tmp_path, "1.0")
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    for args in (["add", "."], ["-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "one"]):
        subprocess.run(["git", "-C", str(project), *args], check=True)
    system = build_system({})
    before = fingerprint(project, system, vcs=True, git=True)
    locked = fingerprint(project, system, vcs=True)
    subprocess.run(["git", "-C", str(project), "tag", "v1.0"], check=True)
    assert fingerprint(project, system, vcs=True, git=True) != before, "the run-time version's key moves"
    assert fingerprint(project, system, vcs=True) == locked, "the lock's metadata key does not"


def _commit(project: Path, message: str) -> None:
    for args in (["add", "."], ["-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", message]):
        subprocess.run(["git", "-C", str(project), *args], check=True)


def test_a_version_from_vcs_is_no_lock_input_and_a_commit_asks_the_backend_once_at_run_time(tmp_path: Path) -> None:
    project = _in_tree(tmp_path, "1.4.3.dev1+gaaaaaaa")
    (project / "pyproject.toml").write_text(PYPROJECT + "\n[tool.setuptools_scm]\n")
    (project / ".gitignore").write_text("CALLS\n")
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    _commit(project, "start")
    backend = IsolatedBackend(tmp_path / "cache")
    spec = load_spec(project, backend)
    (package,) = spec.local_packages
    assert (package.version, package.version_from) == ("", "vcs")
    assert "version" not in spec.inputs()["local-packages"][0]
    assert spec.inputs()["local-packages"][0]["version-from"] == "vcs"
    assert backend.version(project) == "1.4.3.dev1+gaaaaaaa"
    calls = (tmp_path / "CALLS").read_text()
    (project / "VERSION").write_text("1.4.3.dev2+gbbbbbbb")  # what setuptools-scm says of the next commit
    (project / "envlock.lock").write_text("# the lock, committed\n")
    _commit(project, "lock")
    assert load_spec(project, backend).input_hash() == spec.input_hash(), "a commit does not make the lock stale"
    assert (tmp_path / "CALLS").read_text() == calls, "nor re-runs the backend for the lock"
    assert backend.version(project) == "1.4.3.dev2+gbbbbbbb" and backend.version(project) == "1.4.3.dev2+gbbbbbbb"
    assert (tmp_path / "CALLS").read_text() == calls + "x", "the run asks once per HEAD"


def test_a_vcs_versioned_packages_dependencies_are_still_lock_inputs(tmp_path: Path) -> None:
    project = tmp_path / "scm-proj"
    (project / "src" / "scmpkg").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64", "setuptools-scm>=8"]\nbuild-backend = "setuptools.build_meta"\n'
        '\n[project]\nname = "scm-pkg"\ndynamic = ["version"]\n\n[tool.envlock]\n'
    )
    backend = FakeMetadataSource({"scm-proj": _answer("scm-pkg", "1.0.dev1+gabc", ("six==1.16.0",))})
    before = load_spec(project, backend)
    assert before.local_packages[0].version_from == "vcs", "setuptools-scm in requires, no version written"
    backend.answers["scm-proj"] = _answer("scm-pkg", "1.0.dev2+gdef", ("six==1.16.0",))
    assert load_spec(project, backend).input_hash() == before.input_hash(), "another commit: the same inputs"
    backend.answers["scm-proj"] = _answer("scm-pkg", "1.0.dev2+gdef", ("six==1.17.0",))
    assert load_spec(project, backend).input_hash() != before.input_hash(), "a dependency moved: stale"


def test_the_run_mounts_the_commits_dist_info_and_records_its_version(tmp_path: Path) -> None:
    from envlock.image.staging import LOCAL_METADATA, VenvLayout, install_local  # noqa: PLC0415
    from envlock.lock.project import lock_project  # noqa: PLC0415
    from envlock.run.ownversion import current_versions  # noqa: PLC0415
    from envlock.run.service import own_metadata  # noqa: PLC0415
    from tests.fakes import FakeResolver  # noqa: PLC0415

    project = tmp_path / "scm-proj"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[tool.setuptools_scm]\n[tool.envlock]\n[project]\nname = "scm-pkg"\n[build-system]\nrequires = []\n'
    )
    backend = FakeMetadataSource({"scm-proj": _answer("scm-pkg", "1.0.dev1+gabc", ("six==1.16.0",))})
    spec = load_spec(project, backend)
    backend.versions["scm-proj"] = "1.4.3.dev1+g1234567"
    versions = current_versions(spec.local_packages, project, backend)
    assert versions == {"scm-pkg": "1.4.3.dev1+g1234567"}
    lock = lock_project(spec, FakeResolver({"linux/amd64": []})).lock
    assert 'version-from = "vcs"' in spec.lock_path.read_text() and "1.0.dev1" not in spec.lock_path.read_text()
    own = own_metadata(lock, versions, project)
    assert own is not None and own.folder is not None and own.versions == versions
    (info,) = own.folder.iterdir()
    assert info.name == "scm_pkg-1.4.3.dev1+g1234567.dist-info"
    assert "Version: 1.4.3.dev1+g1234567\nRequires-Dist: six==1.16.0\n" in (info / "METADATA").read_text()
    assert "scm-pkg-hello = x.cli:main" in (info / "entry_points.txt").read_text()
    layout = VenvLayout("3.12")
    install_local(lock.local_packages[0], tmp_path / "root", layout)
    site = tmp_path / "root" / layout.site_packages
    assert [p.name for p in site.iterdir()] == ["_envlock_local_scm_pkg.pth"], "no commit's version in the image"
    assert (site / "_envlock_local_scm_pkg.pth").read_text() == f"/work\n{LOCAL_METADATA}\n"
    with pytest.raises(SpecError, match="no version for scm-pkg"):
        own_metadata(lock, {}, project)
