"""The project's code state for a run record: commit, dirty flag, and the uncommitted diff itself."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from envlock.git import Git, diff_against_head, head_commit, own_git, untracked_files
from envlock.paths import STATE_DIR
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


def git_state(project_dir: Path, outputs: tuple[str, ...] = (), run_git: Git = own_git) -> GitState:
    """Ask git; outside a repository (or without git) there is no commit, which is fine. Declared outputs and
    inputs (`outputs` holds both) are not code."""
    commit = head_commit(run_git, project_dir)
    if commit is None:
        return GitState(commit=None, dirty=False)
    diff = diff_against_head(run_git, project_dir)
    untracked = untracked_files(run_git, project_dir)
    # Declared outputs and inputs, and envlock's own state, are not code: they do not make a run dirty.
    ignored = (f"{STATE_DIR}/", *(o.rstrip("/") for o in outputs))
    untracked = [
        name for name in untracked if not any(name == i or name.startswith(i.rstrip("/") + "/") for i in ignored)
    ]
    return GitState(
        commit=commit,
        dirty=bool(diff) or bool(untracked),
        diff=diff,
        untracked=tuple(untracked),
    )


# Private-key headers of every common format: PEM/PKCS#8 (`PRIVATE KEY`, `ENCRYPTED PRIVATE KEY`), RSA, EC, DSA,
# OpenSSH, SSH2 (`---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----`), PGP (`PRIVATE KEY BLOCK`), and PuTTY's .ppk.
_PRIVATE_KEY = re.compile(rb"-{4,5} ?BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)? ?-{4,5}|PuTTY-User-Key-File-\d+:")


def holds_private_key(data: bytes) -> bool:
    """True when the bytes contain a private key's header anywhere (whatever the file is called)."""
    return _PRIVATE_KEY.search(data) is not None


def _read_regular(path: Path, max_bytes: int) -> tuple[os.stat_result, bytes | None] | str:
    """The file's status and, when it is at most `max_bytes`, its bytes (read once, through the one descriptor
    that was checked); or why not: not a regular file (a symlink, a FIFO, a folder), or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR) or path.is_symlink():
            return "not a regular file (a symlink or special file)"
        return f"cannot be read ({exc.strerror})"
    with os.fdopen(fd, "rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            return "not a regular file (a symlink or special file)"
        return status, (handle.read(max_bytes + 1) if status.st_size <= max_bytes else None)


def save_untracked(state: GitState, project_dir: Path, objects: ObjectStore, max_bytes: int) -> GitState:
    """Copy the untracked (not ignored) files into the object store, in name order, up to `max_bytes` in total;
    the state says which were saved (by sha256) and why the others were not.

    Secrets are never saved (they would travel in every bundle): a file readable only by its owner (someone made it
    private on purpose) and a file holding a private key, whatever its name. A copy is no more readable than its
    source (a 0640 file gives a 0440 object)."""
    saved: dict[str, str] = {}
    skipped: dict[str, str] = {}
    total = 0
    for name in state.untracked:
        found = _read_regular(project_dir / name, max_bytes)
        if isinstance(found, str):
            skipped[name] = found
            continue
        status, data = found
        mode = stat.S_IMODE(status.st_mode)
        if not mode & 0o044:
            skipped[name] = f"readable only by its owner (mode {mode:o})"
        elif data is None or len(data) > max_bytes:
            skipped[name] = f"{status.st_size} bytes, over untracked-max-bytes ({max_bytes})"
        elif holds_private_key(data):
            skipped[name] = "a private key"
        elif total + len(data) > max_bytes:
            skipped[name] = f"the untracked files would pass untracked-max-bytes ({max_bytes}) in total"
        else:
            saved[name] = objects.put(data, readable=mode)
            total += len(data)
    return replace(state, saved=saved, skipped=skipped)
