"""The project's code state for a run record: commit, dirty flag, and the uncommitted diff itself."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from envlock.run.objects import ObjectStore


@dataclass(frozen=True)
class GitState:
    """Where the code was: commit (None outside git), dirty flag, the diff against HEAD, untracked files."""

    commit: str | None
    dirty: bool
    diff: bytes = b""
    untracked: tuple[str, ...] = ()
    saved: Mapping[str, str] = field(default_factory=dict)  # untracked file → sha256 of the copy in the object store
    skipped: Mapping[str, str] = field(default_factory=dict)  # untracked file → why no copy was kept

    @property
    def diff_sha256(self) -> str | None:
        """sha256 of the binary diff, or None when clean."""
        return hashlib.sha256(self.diff).hexdigest() if self.diff else None


def git_state(project_dir: Path, outputs: tuple[str, ...] = ()) -> GitState:
    """Ask git; outside a repository (or without git) there is no commit, which is fine. Declared outputs and
    inputs (`outputs` holds both) are not code."""

    def git(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["git", "-C", str(project_dir), *args], capture_output=True, check=False)

    try:
        head = git("rev-parse", "HEAD")
    except OSError:
        return GitState(commit=None, dirty=False)
    if head.returncode != 0:
        return GitState(commit=None, dirty=False)
    diff = git("diff", "HEAD", "--binary", "--no-color", "--", ".").stdout
    listed = git("ls-files", "-z", "--others", "--exclude-standard", "--", ".").stdout
    untracked = [name for name in listed.decode("utf-8", "surrogateescape").split("\0") if name]
    # Declared outputs and inputs, and envlock's own state, are not code: they do not make a run dirty.
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


def _size(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() and not path.is_symlink() else None


def save_untracked(state: GitState, project_dir: Path, objects: ObjectStore, max_bytes: int) -> GitState:
    """Copy the untracked (not ignored) files into the object store, in name order, up to `max_bytes` in total;
    the state says which were saved (by sha256) and why the others were not."""
    saved: dict[str, str] = {}
    skipped: dict[str, str] = {}
    total = 0
    for name in state.untracked:
        size = _size(project_dir / name)
        if size is None:
            skipped[name] = "not a regular file (a symlink or special file)"
        elif size > max_bytes:
            skipped[name] = f"{size} bytes, over untracked-max-bytes ({max_bytes})"
        elif total + size > max_bytes:
            skipped[name] = f"the untracked files would pass untracked-max-bytes ({max_bytes}) in total"
        else:
            saved[name] = objects.put((project_dir / name).read_bytes())
            total += size
    return replace(state, saved=saved, skipped=skipped)
