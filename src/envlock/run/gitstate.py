"""The project's code state for a run record: commit, dirty flag, and the uncommitted diff itself."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

from envlock.run.objects import ObjectStore


class Git(Protocol):
    """How git is run: `git -C cwd args…`, output as bytes, never raising on git's own failure."""

    def __call__(self, cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]: ...


def own_git(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """git on the user's own repository, as the user's configuration says (their hooks, filters, LFS)."""
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, check=False)


# Git on code from elsewhere (a bundle) runs nothing the data or a config could name: no hook, no fsmonitor, no
# transport but local files (a submodule or a remote URL in the commit fetches nothing), no ssh command. The
# system's and the user's config are left out too: with them, a `.gitattributes` in the commit could call a filter
# the receiver has configured (git-lfs would fetch from a URL that the commit's .lfsconfig names). The repository's
# own config is one envlock made (`git init`): nothing from a bundle is ever written under a .git folder.
FOREIGN_CONFIG = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.sshCommand=false",
    "protocol.allow=never",
    "protocol.file.allow=always",  # the bundle file itself, a path envlock passes
    "submodule.recurse=false",
)


def foreign_git(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """git on code from elsewhere: hooks off, no config-driven command, no config but the repository's own, and no
    GIT_* variable of the caller's (GIT_DIR and kin would point git somewhere else)."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
    environ |= {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0"}
    settings = [part for setting in FOREIGN_CONFIG for part in ("-c", setting)]
    return subprocess.run(["git", *settings, "-C", str(cwd), *args], capture_output=True, check=False, env=environ)


# Whose run a command works on: the user's own (their repository, their git config, inputs wherever their links
# lead), or one from elsewhere (a bundle: git with hooks off, its image by ID only, no link out of its folder).
Origin = Literal["own", "foreign"]
GIT_OF: dict[Origin, Git] = {"own": own_git, "foreign": foreign_git}


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

    def git(*args: str) -> subprocess.CompletedProcess[bytes]:
        return run_git(project_dir, *args)

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
