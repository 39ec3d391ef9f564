"""The project's code state for a run record: commit, dirty flag, and the uncommitted diff itself."""

from __future__ import annotations

import hashlib
import os
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
