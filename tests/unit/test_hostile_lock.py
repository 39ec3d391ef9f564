"""A lock from someone else's pull request: every value is checked before use, whatever its recomputed lock-hash."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from envlock.cli.app import run
from envlock.errors import LockfileError
from envlock.lock import lockfile
from envlock.lock.lockfile import BaseLock, Lock, TargetBase
from envlock.lock.project import lock_project
from envlock.lock.resolve import LockedFile
from envlock.lock.shapes import sdist_name_problem, wheel_name_problem
from envlock.lock.spec import load_spec
from tests.fakes import TORCH_251_AMD64, FakeResolver
from tests.unit.test_lockfile import make_lock

Mangle = Callable[[Lock], Lock]


def first_wheel(lock: Lock, **changes: object) -> Lock:
    """The lock with its first package's first wheel changed."""
    target = lock.targets[0]
    first, *rest = target.packages
    changed = replace(first, wheels=(replace(first.wheels[0], **changes), *first.wheels[1:]))  # type: ignore[arg-type]
    return replace(lock, targets=(replace(target, packages=(changed, *rest)),))


@pytest.mark.parametrize(
    ("mangle", "key"),
    [
        (lambda lock: first_wheel(lock, sha256="../../victim"), "wheels[0].hashes.sha256"),
        (lambda lock: first_wheel(lock, sha256="/abs/victim"), "wheels[0].hashes.sha256"),
        (lambda lock: first_wheel(lock, sha256="A" * 64), "wheels[0].hashes.sha256"),
        (lambda lock: first_wheel(lock, name="../evil-1.0-py3-none-any.whl"), "wheels[0].name"),
        (lambda lock: first_wheel(lock, name="not a wheel.whl"), "wheels[0].name"),
        (lambda lock: first_wheel(lock, url="ftp://files.example/x.whl"), "wheels[0].url"),
        (lambda lock: first_wheel(lock, url="https:///x.whl"), "wheels[0].url"),
        (lambda lock: first_wheel(lock, url="https://[files.example/x.whl"), "wheels[0].url"),
        (lambda lock: first_wheel(lock, size=-1), "wheels[0].size"),
        (lambda lock: replace(lock, source_date_epoch=10**12), "environment.source-date-epoch"),
        (lambda lock: replace(lock, source_date_epoch=-1), "environment.source-date-epoch"),
        (lambda lock: replace(lock, base=BaseLock("no-such-recipe", "recipe", "c" * 64)), "environment.base.name"),
        (lambda lock: replace(lock, base=BaseLock("../../etc/passwd", "recipe", "c" * 64)), "environment.base.name"),
        (lambda lock: replace(lock, base=BaseLock("debian:latest", "image", "c" * 64)), "environment.base.name"),
        (lambda lock: replace(lock, base=BaseLock("debian-bookworm", "recipe", "../x")), "environment.base.sha256"),
        (lambda lock: replace(lock, indexes=("pypi.org/simple",)), "environment.indexes[0]"),
        (lambda lock: replace(lock, system_packages=("../x",)), "environment.system-packages[0]"),
        (lambda lock: replace(lock, python="3.11; rm -rf /"), "environment.python"),
        (lambda lock: replace(lock, input_hash="sha256:../x"), "meta.input-hash"),
        (
            lambda lock: replace(lock, targets=(replace(lock.targets[0], base=TargetBase("sha256:/x", {})),)),
            "base.id",
        ),
        (
            lambda lock: replace(
                lock,
                targets=(
                    replace(
                        lock.targets[0],
                        packages=(),
                    ),
                ),
            ),
            None,  # a target without packages is fine: nothing to install
        ),
    ],
)
def test_crafted_values_are_refused_with_the_key_named(tmp_path: Path, mangle: Mangle, key: str | None) -> None:
    path = tmp_path / "envlock.lock"
    lockfile.write(path, mangle(make_lock()))  # the writer recomputes the lock-hash, as an attacker would
    if key is None:
        lockfile.read(path)
        return
    with pytest.raises(LockfileError) as caught:
        lockfile.read(path)
    assert caught.value.exit_code == 3
    assert any(key in line for line in caught.value.details), caught.value.details
    assert caught.value.hint


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda t: "\n".join(line for line in t.splitlines() if not line.startswith("lock-hash")), "meta.lock-hash"),
        (lambda t: t.replace('[[targets."linux/amd64".packages]]', '[[targets."linux/amd64".pkgs]]'), "pkgs"),
        (
            lambda t: t.replace('[targets."linux/amd64".cuda]', 'packages = "x"\n[targets."linux/amd64".cuda]').replace(
                '[[targets."linux/amd64".packages]]', '[[targets."linux/amd64".other]]'
            ),
            ".packages",
        ),
        (lambda t: t.replace("\n[meta]\n", "\nmeta = 5\n[x]\n"), "meta"),
        (lambda t: t.replace("indexes = [", "indexes = 5\nx = ["), "environment.indexes"),
        (lambda t: t.replace("source-date-epoch = ", "source-date-epoch = 1e3 #"), "environment.source-date-epoch"),
        (lambda t: re.sub(r"size = \d+", "size = true", t, count=1), ".size"),
        (lambda t: t.replace("lock-version = 1", 'lock-version = "1"'), "lock-version"),
        (lambda t: t.replace('[targets."linux/amd64".cuda]', '[targets."linux/amd64".cuda]\nkind = 1\n[y]'), "kind"),
    ],
)
def test_wrong_types_anywhere_are_refused_with_the_key_named(
    tmp_path: Path, edit: Callable[[str], str], key: str
) -> None:
    path = tmp_path / "envlock.lock"
    lockfile.write(path, make_lock())
    path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(LockfileError) as caught:
        lockfile.read(path)
    assert any(key in line for line in caught.value.details), (caught.value.message, caught.value.details)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "envlock.lock"
    crafted = replace(first_wheel(make_lock(), sha256="../x", size=-5), source_date_epoch=2**40)
    lockfile.write(path, crafted)
    with pytest.raises(LockfileError) as caught:
        lockfile.read(path)
    assert len(caught.value.details) == 3


def test_a_crafted_lock_touches_nothing_outside_the_cache(
    sample: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wheel sha256 that is a path once made `build` unlink that path while 'verifying' the cache."""
    project = sample("cuda-pinned")
    lock_project(load_spec(project), FakeResolver({"linux/amd64": TORCH_251_AMD64}))
    victim = tmp_path / "victim"
    victim.write_text("precious", encoding="utf-8")
    lock = lockfile.read(project / "envlock.lock")
    for digest in (str(victim), "../../../victim"):
        lockfile.write(project / "envlock.lock", first_wheel(lock, sha256=digest))
        for argv in (["lock", "--check"], ["show"], ["show", "--json"], ["build"], ["export", "pylock"]):
            code = run([*argv, "-C", str(project)])
            err = capsys.readouterr().err
            assert code == 3, (argv, err)
            assert "hashes.sha256" in err and "Traceback" not in err
        assert victim.read_text(encoding="utf-8") == "precious"


def test_files_of_a_valid_lock_still_load(tmp_path: Path) -> None:
    lock = make_lock()
    sdist = LockedFile("filelock-3.16.1.tar.gz", "https://files.example/filelock-3.16.1.tar.gz", "e" * 64, 10)
    target = lock.targets[0]
    packages = tuple(replace(p, sdist=sdist) if p.name == "filelock" else p for p in target.packages)
    lock = replace(lock, targets=(replace(target, packages=packages),))
    lockfile.write(tmp_path / "envlock.lock", lock)
    assert lockfile.read(tmp_path / "envlock.lock") == lock


@pytest.mark.parametrize(
    ("check", "value", "problem"),
    [
        (wheel_name_problem, "torch-2.5.1-cp311-cp311-linux_x86_64.whl", None),
        (
            wheel_name_problem,
            "../evil-1.0-py3-none-any.whl",
            "'../evil-1.0-py3-none-any.whl' is a path, not a file name",
        ),
        (wheel_name_problem, "a\\b-1.0-py3-none-any.whl", "'a\\\\b-1.0-py3-none-any.whl' is a path, not a file name"),
        (
            wheel_name_problem,
            "demo-1.0.tar.gz",
            "'demo-1.0.tar.gz' is not a wheel file name "
            "(Invalid wheel filename (extension must be '.whl'): 'demo-1.0.tar.gz')",
        ),
        (sdist_name_problem, "demo-1.0.tar.gz", None),
        (sdist_name_problem, "sub/demo-1.0.tar.gz", "'sub/demo-1.0.tar.gz' is a path, not a file name"),
        (
            sdist_name_problem,
            "demo-1.0-py3-none-any.whl",
            "'demo-1.0-py3-none-any.whl' is not an sdist file name "
            "(Invalid sdist filename (extension must be '.tar.gz' or '.zip'): 'demo-1.0-py3-none-any.whl')",
        ),
        (
            sdist_name_problem,
            "demo-notaversion.tar.gz",
            "'demo-notaversion.tar.gz' is not an sdist file name "
            "(Invalid sdist filename (invalid version): 'demo-notaversion.tar.gz')",
        ),
    ],
)
def test_a_distribution_file_name_is_a_bare_name_of_its_kind(
    check: Callable[[str], str | None], value: str, problem: str | None
) -> None:
    assert check(value) == problem
