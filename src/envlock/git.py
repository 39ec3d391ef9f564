"""Every git command envlock runs, and the one place that spells how git is started.

Two kinds of repository, named by `Origin`: the user's own (their configuration, hooks, filters and LFS apply, as
when they type git themselves) and a foreign one, rebuilt from a bundle (git then runs nothing the data or any
configuration could name). Callers pick the kind; the protections follow from it, in `invocation`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from envlock.errors import RerunError

# Whose repository git works on: the user's own, or one from elsewhere (a bundle: hooks off, no outside config).
Origin = Literal["own", "foreign"]

# Git on code from elsewhere (a bundle) runs nothing the data or a config could name: no hook, no fsmonitor, no
# transport but local files (a submodule or a remote URL in the commit fetches nothing), no ssh command. The
# system's and the user's config are left out too (see `invocation`): with them, a `.gitattributes` in the commit
# could call a filter the receiver has configured (git-lfs would fetch from a URL that the commit's .lfsconfig
# names). The repository's own config is one envlock made (`git init`): nothing from a bundle is ever written under
# a .git folder.
FOREIGN_CONFIG = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.sshCommand=false",
    "protocol.allow=never",
    "protocol.file.allow=always",  # the bundle file itself, a path envlock passes
    "submodule.recurse=false",
)


@dataclass(frozen=True)
class Invocation:
    """A git command line and the environment it runs with (None: the caller's own)."""

    argv: tuple[str, ...]
    env: Mapping[str, str] | None


def invocation(origin: Origin, cwd: Path, *args: str) -> Invocation:
    """The one way envlock starts git: `git -C cwd args…` as the user would for their own repository; for a
    foreign one, with FOREIGN_CONFIG, no system or global config, no prompt, and no GIT_* variable of the caller's
    (GIT_DIR and kin would point git somewhere else)."""
    if origin == "own":
        return Invocation(("git", "-C", str(cwd), *args), None)
    environ = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
    environ |= {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0"}
    settings = [part for setting in FOREIGN_CONFIG for part in ("-c", setting)]
    return Invocation(("git", *settings, "-C", str(cwd), *args), environ)


class Git(Protocol):
    """How git is run: `git -C cwd args…`, output as bytes, never raising on git's own failure."""

    def __call__(self, cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]: ...


def run_git(origin: Origin, cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run git as `invocation` spells it; OSError when git is not installed."""
    spelled = invocation(origin, cwd, *args)
    return subprocess.run(list(spelled.argv), capture_output=True, check=False, env=spelled.env)


def own_git(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """git on the user's own repository, as the user's configuration says (their hooks, filters, LFS)."""
    return run_git("own", cwd, *args)


def foreign_git(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """git on code from elsewhere: hooks off, no config-driven command, no config but the repository's own."""
    return run_git("foreign", cwd, *args)


GIT_OF: dict[Origin, Git] = {"own": own_git, "foreign": foreign_git}


def _said(done: subprocess.CompletedProcess[bytes]) -> str:
    """git's complaint, decoded and stripped."""
    return done.stderr.decode("utf-8", "replace").strip()


def _text(done: subprocess.CompletedProcess[bytes]) -> str:
    return done.stdout.decode("utf-8", "replace").strip()


# -- the code state of a run (read only) --------------------------------------------------------------------------


def head_commit(git: Git, cwd: Path) -> str | None:
    """The commit checked out, or None outside a repository or without git."""
    try:
        head = git(cwd, "rev-parse", "HEAD")
    except OSError:
        return None
    return head.stdout.decode().strip() if head.returncode == 0 else None


def diff_against_head(git: Git, cwd: Path) -> bytes:
    """The uncommitted changes under `cwd`, as a binary patch (empty when clean)."""
    return git(cwd, "diff", "HEAD", "--binary", "--no-color", "--", ".").stdout


def untracked_files(git: Git, cwd: Path) -> list[str]:
    """The files under `cwd` git neither tracks nor ignores, relative to `cwd`."""
    listed = git(cwd, "ls-files", "-z", "--others", "--exclude-standard", "--", ".").stdout
    return [name for name in listed.decode("utf-8", "surrogateescape").split("\0") if name]


def toplevel(git: Git, cwd: Path) -> Path | None:
    """The repository's top folder, or None when git cannot say."""
    top = _text(git(cwd, "rev-parse", "--show-toplevel"))
    return Path(top) if top else None


def prefix(git: Git, cwd: Path) -> str:
    """`cwd` inside its repository, as git names it (`sub/dir/`, or empty at the top)."""
    return _text(git(cwd, "rev-parse", "--show-prefix"))


# -- reproduce: the recorded commit beside the project ------------------------------------------------------------


@contextlib.contextmanager
def detached_worktree(git: Git, repo: Path, work: Path, commit: str) -> Iterator[Path]:
    """A worktree of `repo` at `commit` in `work` (a path that does not exist yet), removed on leaving."""
    hint = f"is commit {commit[:12]} still in this repository?"
    _must(git, repo, "worktree", "add", "--detach", str(work), commit, hint=hint)
    try:
        yield work
    finally:
        git(repo, "worktree", "remove", "--force", str(work))


def apply_patch(git: Git, work: Path, patch: Path) -> None:
    """Apply a binary patch (paths relative to the repository) to the worktree and its index."""
    _must(git, work, "apply", "--index", "--binary", str(patch.resolve()), hint="the recorded diff does not apply")


def _must(git: Git, cwd: Path, *args: str, hint: str) -> None:
    done = git(cwd, *args)
    if done.returncode != 0:
        said = _said(done)
        raise RerunError(f"git {args[0]} failed: {said.splitlines()[-1] if said else ''}", hint=hint)


# -- bundles: one commit out of the user's repository, into an empty one ------------------------------------------

BUNDLE_REFS = "refs/envlock-bundle"


def bundle_commit(repo: Path, commit: str, name: str, out: Path) -> None:
    """`git bundle create` of a commit of the user's own repository, through a temporary ref under BUNDLE_REFS
    (a bundle holds refs, not bare commits)."""
    ref = f"{BUNDLE_REFS}/{name}"
    made = own_git(repo, "update-ref", ref, commit)
    if made.returncode != 0:
        raise RerunError(f"commit {commit[:12]} is not in this repository: {_said(made)}")
    try:
        done = own_git(repo, "bundle", "create", str(out.resolve()), ref)
        if done.returncode != 0:
            raise RerunError(f"git bundle failed: {_said(done)}")
    finally:
        own_git(repo, "update-ref", "-d", ref)


def bundle_heads(bundle: Path) -> list[str]:
    """The commits a bundle file names (read as foreign: the file came from elsewhere), git started in an empty
    folder of its own: never in the folder the bundle was unpacked into, where a `.git` of the sender's would be
    the repository git reads its config from."""
    with tempfile.TemporaryDirectory(prefix="envlock-git-") as empty:
        heads = foreign_git(Path(empty), "bundle", "list-heads", str(bundle.resolve()))
    return heads.stdout.decode("utf-8", "replace").split()


def checkout_bundle(bundle: Path, repo: Path, commit: str) -> None:
    """A new repository in `repo` (an empty folder) with the bundle's refs fetched and `commit` checked out, all of
    it as foreign git. RerunError when git refuses."""
    for args in (
        ("init", "--quiet"),
        ("fetch", "--quiet", str(bundle), f"{BUNDLE_REFS}/*:{BUNDLE_REFS}/*"),
        ("checkout", "--quiet", "--detach", commit),
    ):
        done = foreign_git(repo, *args)
        if done.returncode != 0:
            raise RerunError(f"cannot rebuild the bundle's code (git {args[0]}): {_said(done)}")
