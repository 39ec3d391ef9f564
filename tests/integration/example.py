"""The CPU example (examples/digits) copied into a git repository of its own, as a user's project would be; and a
small stand-in for it (tests/data/projects/small-train) where the example's ~490 MB are not the point."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"
SMALL_TRAIN = Path(__file__).resolve().parents[1] / "data" / "projects" / "small-train"


def git(project: Path, *args: str) -> None:
    """A git command in the project, with an identity of its own (CI has none configured)."""
    subprocess.run(
        ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True
    )


def digits_repo(project: Path, files: tuple[str, ...] = ("pyproject.toml", "train.py", "envlock.lock")) -> Path:
    """Copy the example's files into `project` and commit them (outputs and envlock's state ignored)."""
    project.mkdir(parents=True, exist_ok=True)
    for name in files:
        shutil.copy(EXAMPLE / name, project / name)
    (project / ".gitignore").write_text("out/\n.envlock/\n")
    git(project, "init", "-q")
    git(project, "add", ".")
    git(project, "commit", "-qm", "example")
    return project


def small_repo(project: Path, *, name: str, pin: str) -> Path:
    """A small project in a git repository of its own, locked and committed: the base and one pinned package (a
    lock of the calling module's own: one lock gives one image ID, and tests remove images by ID; see
    tests/conftest.py), image `name`, and train.py writing out/model.pkl and out/metrics.json, the same bytes
    from the same image, as the example's does (`python train.py --out out`)."""
    project.mkdir(parents=True, exist_ok=True)
    shutil.copy(SMALL_TRAIN / "train.py", project / "train.py")
    (project / "pyproject.toml").write_text(
        f'[project]\nname = "{name}"\nversion = "0.1.0"\ndependencies = ["{pin}"]\n\n[tool.envlock]\nname = "{name}"\n'
    )
    (project / ".gitignore").write_text("out/\n.envlock/\n")
    envlock = str(Path(sys.executable).with_name("envlock"))
    locked = subprocess.run([envlock, "lock", "-C", str(project)], capture_output=True, text=True, check=False)
    assert locked.returncode == 0, locked.stderr
    git(project, "init", "-q")
    git(project, "add", ".")
    git(project, "commit", "-qm", "small project")
    return project
