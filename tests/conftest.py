"""Shared fixtures: sample projects copied from tests/data into a temp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture
def sample(tmp_path: Path) -> Callable[[str], Path]:
    """Copy tests/data/projects/NAME to a temp dir and return it."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(DATA / "projects" / name, target)
        return target

    return copy


@pytest.fixture
def write_project(tmp_path: Path) -> Callable[[str], Path]:
    """Write a pyproject.toml with the given text into a fresh project dir."""

    def write(text: str) -> Path:
        project = tmp_path / "project"
        project.mkdir(exist_ok=True)
        (project / "pyproject.toml").write_text(text, encoding="utf-8")
        return project

    return write


@pytest.fixture(autouse=True, scope="session")
def no_background_compile() -> Iterator[None]:
    """No detached bytecode-compile container after each build or first run: the suite builds and removes many
    images in quick succession (a running compile holds its image). tests/unit/test_bytecode.py and the
    integration test of the compile switch it back on for themselves."""
    before = os.environ.get("ENVLOCK_PRECOMPILE")
    os.environ["ENVLOCK_PRECOMPILE"] = "0"
    yield
    if before is None:
        os.environ.pop("ENVLOCK_PRECOMPILE", None)
    else:
        os.environ["ENVLOCK_PRECOMPILE"] = before


@pytest.fixture(autouse=True, scope="session")
def isolated_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The user's config (envlock's trust store, default keys) in a session temp dir: a test never trusts, nor
    writes, a key of the user running the tests."""
    config = tmp_path_factory.mktemp("xdg-config")
    before = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(config)
    yield config
    if before is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = before


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """envlock's cache (wheels, layers, bases) in a session temp dir: tests never touch the user's cache."""
    cache = tmp_path_factory.mktemp("envlock-cache")
    before = os.environ.get("ENVLOCK_CACHE_DIR")
    os.environ["ENVLOCK_CACHE_DIR"] = str(cache)
    yield cache
    if before is None:
        os.environ.pop("ENVLOCK_CACHE_DIR", None)
    else:
        os.environ["ENVLOCK_CACHE_DIR"] = before


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests that need the arm64 base under qemu run last: it is built meanwhile (see arm64_base_meanwhile)."""
    items.sort(key=lambda item: item.get_closest_marker("emulation") is not None)  # stable: the rest keep order


@pytest.fixture(autouse=True, scope="session")
def arm64_base_meanwhile(request: pytest.FixtureRequest, isolated_cache: Path) -> Iterator[None]:
    """When emulation tests are selected, build the arm64 base (minutes under qemu, one core) in the background
    from the start, while the other tests mostly wait on the engine and the network. Whoever needs it before it is
    done waits on the base store's lock instead of building it again."""
    from envlock.lock.targets import emulated  # noqa: PLC0415

    wanted = any(item.get_closest_marker("emulation") for item in request.session.items)
    if not wanted or not emulated("linux/arm64") or shutil.which("mmdebstrap") is None:
        yield
        return
    envlock = Path(sys.executable).with_name("envlock")
    log = (isolated_cache / "arm64-base.log").open("w")
    build = subprocess.Popen(
        [str(envlock), "base", "build", "debian-bookworm", "--platform", "linux/arm64"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "ENVLOCK_CACHE_DIR": str(isolated_cache)},
    )
    try:
        yield
    finally:
        try:
            build.wait(timeout=900)
        except subprocess.TimeoutExpired:
            build.kill()
            build.wait()
        log.close()
