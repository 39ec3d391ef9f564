"""envlock as a normal package: its wheel, installed (not editable) into a fresh venv, works on its own."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from envlock.lock.uv import find_uv

pytestmark = [pytest.mark.network, pytest.mark.slow]  # uv fetches envlock's dependencies from PyPI (or its cache)
ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_recipes_and_data_and_runs_from_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--installer", "uv", "--outdir", str(dist), str(ROOT)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = dist.glob("envlock-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # uv installs the wheel and its dependencies from its warm cache; pip fetched them all again (~half the test)
    installed = subprocess.run(
        [find_uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(wheel)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]
    site = next((venv / "lib").glob("python3.*/site-packages"))
    assert (site / "envlock" / "base_images" / "debian-bookworm.toml").is_file()
    assert (site / "envlock" / "data" / "cuda.toml").is_file()
    assert not (site / "envlock" / "base_images").is_symlink()

    project = tmp_path / "digits"
    shutil.copytree(ROOT / "examples" / "digits", project)
    envlock = str(venv / "bin" / "envlock")
    # From a directory that is not the checkout: nothing may be found through it.
    listed = subprocess.run([envlock, "base", "list"], capture_output=True, text=True, check=False, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "debian-bookworm" in listed.stdout
    checked = subprocess.run(
        [envlock, "lock", "--check", "-C", str(project)], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert checked.returncode == 0, checked.stderr
    assert "up to date" in checked.stdout
    shown = subprocess.run([envlock, "show", "-C", str(project)], capture_output=True, text=True, check=False)
    assert shown.returncode == 0 and "scikit-learn" in shown.stdout, shown.stderr
