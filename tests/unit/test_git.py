"""envlock.git: the one room git is started from, the two kinds of repository, and the commands built on them."""

from __future__ import annotations

import ast
import os
import subprocess
from pathlib import Path

import pytest

from envlock.errors import RerunError
from envlock.git import (
    FOREIGN_CONFIG,
    apply_patch,
    bundle_commit,
    bundle_heads,
    checkout_bundle,
    detached_worktree,
    diff_against_head,
    head_commit,
    invocation,
    own_git,
    prefix,
    toplevel,
    untracked_files,
)
from tests.srcscan import SRC, found_outside


def _repo(path: Path) -> str:
    """A repository with one commit (train.py); returns the commit."""
    path.mkdir(parents=True, exist_ok=True)
    for args in (
        ("init", "--quiet"),
        ("config", "user.email", "t@example.com"),
        ("config", "user.name", "t"),
    ):
        subprocess.run(["git", "-C", str(path), *args], check=True)
    (path / "train.py").write_text("print(1)\n", encoding="utf-8")
    subprocess.run(["git", "-C", str(path), "add", "train.py"], check=True)
    subprocess.run(["git", "-C", str(path), "commit", "--quiet", "-m", "one"], check=True)
    return own_git(path, "rev-parse", "HEAD").stdout.decode().strip()


def test_own_git_is_the_users_git_as_they_would_type_it(tmp_path: Path) -> None:
    spelled = invocation("own", tmp_path, "status")
    assert spelled.argv == ("git", "-C", str(tmp_path), "status")
    assert spelled.env is None, "the user's own environment and configuration apply"


def test_foreign_git_runs_with_hooks_off_and_no_outside_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_DIR", "/elsewhere/.git")
    monkeypatch.setenv("GIT_SSH_COMMAND", "touch /tmp/pwned")
    spelled = invocation("foreign", tmp_path, "fetch", "x.bundle")
    settings = [part for setting in FOREIGN_CONFIG for part in ("-c", setting)]
    assert spelled.argv == ("git", *settings, "-C", str(tmp_path), "fetch", "x.bundle")
    assert "core.hooksPath=/dev/null" in FOREIGN_CONFIG
    assert "core.fsmonitor=false" in FOREIGN_CONFIG
    assert "core.sshCommand=false" in FOREIGN_CONFIG
    assert spelled.env is not None
    assert not [name for name in spelled.env if name.startswith("GIT_") and name not in _FOREIGN_VARIABLES]
    assert {name: spelled.env[name] for name in _FOREIGN_VARIABLES} == {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
    }


_FOREIGN_VARIABLES = ("GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_GLOBAL", "GIT_TERMINAL_PROMPT")


def test_code_state_commands_on_a_real_repository(tmp_path: Path) -> None:
    assert head_commit(own_git, tmp_path) is None, "outside a repository there is no commit"
    commit = _repo(tmp_path / "repo")
    (tmp_path / "repo" / "sub").mkdir()
    assert head_commit(own_git, tmp_path / "repo") == commit
    assert toplevel(own_git, tmp_path / "repo" / "sub") == (tmp_path / "repo").resolve()
    assert prefix(own_git, tmp_path / "repo" / "sub") == "sub/"
    (tmp_path / "repo" / "train.py").write_text("print(2)\n", encoding="utf-8")
    (tmp_path / "repo" / "notes.txt").write_text("n\n", encoding="utf-8")
    assert b"+print(2)" in diff_against_head(own_git, tmp_path / "repo")
    assert untracked_files(own_git, tmp_path / "repo") == ["notes.txt"]


def test_a_worktree_at_a_commit_gets_the_diff_and_is_removed_after(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    commit = _repo(repo)
    (repo / "train.py").write_text("print(2)\n", encoding="utf-8")
    patch = tmp_path / "diff.patch"
    patch.write_bytes(diff_against_head(own_git, repo))
    work = tmp_path / "work"
    with detached_worktree(own_git, repo, work, commit) as checked_out:
        assert (checked_out / "train.py").read_text(encoding="utf-8") == "print(1)\n"
        apply_patch(own_git, checked_out, patch)
        assert (checked_out / "train.py").read_text(encoding="utf-8") == "print(2)\n"
    assert not work.exists()


def test_a_missing_commit_is_a_rerun_error_naming_it(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _repo(repo)
    with pytest.raises(RerunError) as raised, detached_worktree(own_git, repo, tmp_path / "w", "0" * 40):
        pass
    assert raised.value.message.startswith("git worktree failed: ")
    assert raised.value.hint == f"is commit {'0' * 12} still in this repository?"


def test_a_commit_travels_through_a_bundle_into_an_empty_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    commit = _repo(repo)
    bundle = tmp_path / "code.gitbundle"
    bundle_commit(repo, commit, "run-1", bundle)
    assert b"refs/envlock-bundle/" not in own_git(repo, "show-ref").stdout, "the temporary ref is gone"
    assert commit in bundle_heads(bundle)
    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    checkout_bundle(bundle, rebuilt, commit)
    assert (rebuilt / "train.py").read_text(encoding="utf-8") == "print(1)\n"
    with pytest.raises(RerunError, match=r"^commit 111111111111 is not in this repository: "):
        bundle_commit(repo, "1" * 40, "run-2", tmp_path / "other.gitbundle")


def _starts_git(node: ast.expr) -> bool:
    """A list or tuple that reads as a git command line: "git" followed by an option or a value computed at run
    time (a table of keys such as ("git", "host") is not one)."""
    if not (isinstance(node, ast.List | ast.Tuple) and len(node.elts) > 1):
        return False
    first, second = node.elts[0], node.elts[1]
    if not (isinstance(first, ast.Constant) and first.value == "git"):
        return False
    return not isinstance(second, ast.Constant) or str(second.value).startswith("-")


def _git_command_lines(source: str) -> list[int]:
    """The lines of `source` that spell a git command line, or hand one to subprocess."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.expr):
            continue
        if (isinstance(node, ast.Call) and node.args and _starts_git_call(node)) or _starts_git(node):
            found.append(node.lineno)
    return sorted(set(found))


def _starts_git_call(node: ast.Call) -> bool:
    """subprocess.run(["git", …]) and kin, whatever follows "git"."""
    first = node.args[0]
    return (
        isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "subprocess"
        and isinstance(first, ast.List | ast.Tuple)
        and bool(first.elts)
        and isinstance(first.elts[0], ast.Constant)
        and first.elts[0].value == "git"
    )


def test_the_scan_finds_git_command_lines_and_only_those() -> None:
    source = 'import subprocess\nsubprocess.run(["git", "status"])\ncmd = ("git", "-C", d)\nkeys = ("git", "host")\n'
    assert _git_command_lines(source) == [2, 3]
    assert _git_command_lines((SRC / "git.py").read_text(encoding="utf-8")) != []


def test_git_is_started_only_from_envlock_git() -> None:
    assert found_outside("git.py", _git_command_lines) == {}
