"""The CPU example (examples/digits) copied into a git repository of its own, as a user's project would be."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"


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
