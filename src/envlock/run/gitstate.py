"""The project's code state for a run record: commit, dirty flag, and the uncommitted diff itself."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GitState:
    """Where the code was: commit (None outside git), dirty flag, the diff against HEAD, untracked files."""

    commit: str | None
    dirty: bool
    diff: bytes = b""
    untracked: tuple[str, ...] = ()

    @property
    def diff_sha256(self) -> str | None:
        """sha256 of the binary diff, or None when clean."""
        return hashlib.sha256(self.diff).hexdigest() if self.diff else None


def git_state(project_dir: Path, outputs: tuple[str, ...] = ()) -> GitState:
    """Ask git; outside a repository (or without git) there is no commit, which is fine. Outputs are not code."""

    def git(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["git", "-C", str(project_dir), *args], capture_output=True, check=False)

    try:
        head = git("rev-parse", "HEAD")
    except OSError:
        return GitState(commit=None, dirty=False)
    if head.returncode != 0:
        return GitState(commit=None, dirty=False)
    diff = git("diff", "HEAD", "--binary", "--no-color", "--", ".").stdout
    untracked = git("ls-files", "--others", "--exclude-standard", "--", ".").stdout.decode().split()
    # Declared outputs and envlock's own state are not code: they do not make a run dirty.
    ignored = (".envlock/", *(o.rstrip("/") for o in outputs))
    untracked = [
        name for name in untracked if not any(name == i or name.startswith(i.rstrip("/") + "/") for i in ignored)
    ]
    return GitState(
        commit=head.stdout.decode().strip(),
        dirty=bool(diff) or bool(untracked),
        diff=diff,
        untracked=tuple(untracked),
    )
