"""The project's own package in the image: metadata only (a .pth into /work, a generated dist-info, scripts)."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from envlock.cli.render import render_lock
from envlock.errors import LockfileError
from envlock.image.layers import LayerStore
from envlock.image.plan import make_layers, plan_image
from envlock.image.wheels import WheelCache
from envlock.lock import lockfile
from envlock.lock.project import lock_project
from envlock.lock.resolve import LockedPackage
from envlock.lock.spec import load_spec
from tests.fakes import FakeFetcher, FakeResolver

PACKAGE = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "My-Trainer"
version = "1.2.0"
dependencies = ["idna>=3"]

[project.scripts]
train = "my_trainer.cli:main"

[project.entry-points."my.plugins"]
fast = "my_trainer.plugins:Fast"
"""


def _package_project(write_project: Callable[[str], Path], text: str = PACKAGE) -> Path:
    project = write_project(text)
    (project / "src" / "my_trainer").mkdir(parents=True, exist_ok=True)
    (project / "src" / "my_trainer" / "__init__.py").write_text("")
    return project


def test_a_package_project_is_a_local_package_keyed_into_inputs_and_lock(write_project: Callable[[str], Path]) -> None:
    project = _package_project(write_project)
    spec = load_spec(project)
    (local,) = spec.local_packages
    assert (local.name, local.version, local.path) == ("My-Trainer", "1.2.0", "src")
    assert ("console_scripts", "train", "my_trainer.cli:main") in local.entry_points
    assert spec.requirements == ("idna>=3",)
    outcome = lock_project(spec, FakeResolver({"linux/amd64": [LockedPackage("idna", "3.10")]}))
    assert lockfile.loads(lockfile.dumps(outcome.lock)) == outcome.lock
    shown = render_lock(outcome.lock, ["linux/amd64"], "up to date")
    assert "local package My-Trainer 1.2.0 from /work/src; scripts: train" in shown
    assert outcome.lock.local_packages == spec.local_packages

    bumped = _package_project(write_project, PACKAGE.replace('version = "1.2.0"', 'version = "1.3.0"'))
    assert load_spec(bumped).input_hash() != spec.input_hash(), "new metadata: the lock is stale"


def test_a_project_without_build_system_has_no_local_package_and_its_input_hash_is_unchanged(
    write_project: Callable[[str], Path],
) -> None:
    spec = load_spec(write_project('[project]\nname = "plain"\ndependencies = ["idna"]\n'))
    assert spec.local_packages == () and "local-packages" not in spec.inputs() and "constraints" not in spec.inputs()


def test_workspace_members_and_file_requirements_inside_the_project(write_project: Callable[[str], Path]) -> None:
    project = write_project(
        '[project]\nname = "app"\ndependencies = ["libone", "libtwo @ file:./libs/two"]\n'
        '[tool.uv.workspace]\nmembers = ["libs/one"]\n'
    )
    for name in ("one", "two"):
        member = project / "libs" / name
        (member / f"lib{name}").mkdir(parents=True)
        (member / "pyproject.toml").write_text(
            f'[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
            f'[project]\nname = "lib{name}"\nversion = "0.{len(name)}"\ndependencies = ["dep-{name}"]\n'
        )
    spec = load_spec(project)
    assert [(p.name, p.path) for p in spec.local_packages] == [("libone", "libs/one"), ("libtwo", "libs/two")]
    assert spec.requirements == ("dep-one", "dep-two")


def _layer_files(tar: Path) -> dict[str, bytes]:
    with tarfile.open(tar) as archive:
        return {m.name: (archive.extractfile(m) or b"").read() if m.isfile() else b"" for m in archive}  # type: ignore[union-attr]


def test_the_local_layer_holds_metadata_only_and_does_not_move_when_the_code_does(
    tmp_path: Path, write_project: Callable[[str], Path]
) -> None:
    project = _package_project(write_project)
    spec = load_spec(project)
    lock = lock_project(spec, FakeResolver({"linux/amd64": []})).lock
    plan = plan_image(lock, "my-trainer", "linux/amd64")
    assert [layer.label for layer in plan.layers] == ["venv", "local", "lock"]
    cache = WheelCache(tmp_path / "wheels", FakeFetcher({}))
    first = make_layers(plan, cache, LayerStore(tmp_path / "a"), lambda _m: None)
    (project / "src" / "my_trainer" / "__init__.py").write_text("print('edited')\n")
    second = make_layers(plan, cache, LayerStore(tmp_path / "b"), lambda _m: None)
    assert [layer.diff_id for layer in first] == [layer.diff_id for layer in second]
    files = _layer_files(first[1].tar)
    site = "opt/envlock/venv/lib/python3.11/site-packages"
    assert files[f"{site}/_envlock_local_my_trainer.pth"] == b"/work/src\n"
    info = f"{site}/my_trainer-1.2.0.dist-info"
    assert b"Name: My-Trainer\nVersion: 1.2.0\nRequires-Dist: idna>=3\n" in files[f"{info}/METADATA"]
    assert b"[my.plugins]\nfast = my_trainer.plugins:Fast" in files[f"{info}/entry_points.txt"]
    assert files["opt/envlock/venv/bin/train"].startswith(b"#!/opt/envlock/venv/bin/python\n")
    assert not any(name.endswith("my_trainer/__init__.py") for name in files), "no code in the image"


def test_a_lock_whose_local_package_would_write_outside_the_venv_is_refused(
    write_project: Callable[[str], Path],
) -> None:
    project = _package_project(write_project)
    spec = load_spec(project)
    lock_project(spec, FakeResolver({"linux/amd64": []}))
    text = spec.lock_path.read_text()
    for good, bad in (('"train"', '"../../etc/cron"'), ('path = "src"', 'path = "../elsewhere"')):
        assert good in text
        with pytest.raises(LockfileError, match="is not a usable local package"):
            lockfile.loads(text.replace(good, bad))
