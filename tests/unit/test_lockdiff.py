"""`envlock diff` / `envlock lock`'s change lines: every field the lock hash covers is named when it moves, so two
locks with different hashes never compare as "no differences"."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from envlock.lock import lockfile
from envlock.lock.lockdiff import diff_locks
from envlock.lock.lockfile import Lock, TargetBase, TargetLock

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits" / "envlock.lock"
AMD64 = "linux/amd64"


@pytest.fixture(scope="module")
def lock() -> Lock:
    return lockfile.read(EXAMPLE)


def with_target(lock: Lock, **changes: Any) -> Lock:
    """The lock with its linux/amd64 target's fields replaced."""
    return replace(lock, targets=tuple(replace(t, **changes) if t.platform == AMD64 else t for t in lock.targets))


def amd64(lock: Lock) -> TargetLock:
    return lock.target(AMD64)


def layered(lock: Lock, order: list[str]) -> Lock:
    return replace(with_target(lock, layers=tuple(order)), image_layout=lockfile.LISTED_LAYOUT)


def test_the_same_lock_has_no_differences(lock: Lock) -> None:
    assert not diff_locks(lock, lock)
    assert diff_locks(lock, lock).lines() == []


def test_a_rebuilt_base_is_named_with_its_id_and_each_debian_package(lock: Lock) -> None:
    base = amd64(lock).base
    assert base is not None and "libc6" in base.debian
    debian = {**base.debian, "libc6": "9.99-1", "envlock-new-pkg": "1.0-1"}
    rebuilt = with_target(lock, base=TargetBase(id="sha256:" + "f" * 64, debian=debian))

    changes = diff_locks(lock, rebuilt)
    assert changes and rebuilt.lock_hash != lock.lock_hash
    lines = changes.lines()
    assert f"{AMD64}: base.id: {base.id} -> sha256:{'f' * 64}" in lines
    assert f"{AMD64}: base.debian.libc6: {base.debian['libc6']} -> 9.99-1" in lines
    assert f"{AMD64}: base.debian.envlock-new-pkg: none -> 1.0-1" in lines
    fields = changes.as_dict()["targets"][AMD64]["fields"]
    assert fields["base.debian.libc6"] == {"old": base.debian["libc6"], "new": "9.99-1"}


def test_a_base_only_one_side_has_is_one_line_not_one_per_package(lock: Lock) -> None:
    base = amd64(lock).base
    assert base is not None
    lines = diff_locks(with_target(lock, base=None), lock).lines()
    assert lines == [f"{AMD64}: base: none -> {base.id} ({len(base.debian)} Debian packages)"]


def test_the_python_platform_is_named(lock: Lock) -> None:
    moved = with_target(lock, python_platform="x86_64-manylinux_2_99")
    assert diff_locks(lock, moved).lines() == [
        f"{AMD64}: python-platform: {amd64(lock).python_platform} -> x86_64-manylinux_2_99"
    ]


def test_a_new_layer_order_of_the_same_packages_says_from_which_layer_the_image_differs(lock: Lock) -> None:
    names = sorted(p.name for p in amd64(lock).packages)[:4]
    before = layered(lock, names)
    after = layered(lock, [names[0], names[2], names[1], names[3]])
    assert after.lock_hash != before.lock_hash, "the hash covers the order"

    changes = diff_locks(before, after)
    assert changes.lines() == [
        f"{AMD64}: layer order: from layer 2 of 4 up (was {names[1]}, now {names[2]}, the same layers)"
    ]
    new = list(after.target(AMD64).layers or ())
    assert changes.as_dict()["targets"][AMD64]["layers"] == {"old": names, "new": new}


def test_a_layer_added_on_top_starts_the_difference_above_the_old_ones(lock: Lock) -> None:
    names = sorted(p.name for p in amd64(lock).packages)[:3]
    lines = diff_locks(layered(lock, names[:2]), layered(lock, names)).lines()
    assert lines == [f"{AMD64}: layer order: from layer 3 of 3 up (was nothing, now {names[2]})"]


def test_a_first_listed_order_says_so(lock: Lock) -> None:
    names = sorted(p.name for p in amd64(lock).packages)[:3]
    lines = diff_locks(lock, layered(lock, names)).lines()
    assert lines == ["image-layout: none -> 3", f"{AMD64}: layer order: in stability order -> listed (3 layers)"]


def test_no_single_field_change_goes_unnamed(lock: Lock) -> None:
    """Each target field in turn: a new hash always comes with at least one change line."""
    target = amd64(lock)
    base = target.base
    assert base is not None
    variants = {
        "python_platform": with_target(lock, python_platform="x86_64-manylinux_2_17"),
        "base.id": with_target(lock, base=replace(base, id="sha256:" + "0" * 64)),
        "base.debian": with_target(lock, base=replace(base, debian={})),
        "base": with_target(lock, base=None),
        "cuda": with_target(lock, cuda=replace(target.cuda, kind="cuda", runtime="12.9")),
        "packages": with_target(lock, packages=target.packages[1:]),
        "layers": layered(lock, [target.packages[0].name]),
    }
    for name, variant in variants.items():
        assert variant.lock_hash != lock.lock_hash, name
        assert diff_locks(lock, variant).lines(), f"{name} moved, the hash moved, and no line says so"
