"""Shared fixtures: sample projects copied from tests/data into a temp dir."""

from __future__ import annotations

import os
import shutil
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
