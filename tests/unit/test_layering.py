"""Image layout 3: the lock lists its layers' order, and `envlock lock` keeps what a change leaves alone in place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from envlock.errors import LockfileError
from envlock.image.plan import plan_image
from envlock.lock import lockfile
from envlock.lock.layering import relocked_order
from envlock.lock.project import LockOptions, lock_project
from envlock.lock.resolve import LockedPackage
from envlock.lock.spec import Spec, load_spec
from tests.fakes import FakeResolver, package

MIB = 1 << 20
AMD64 = "linux/amd64"
# name: (version, wheel bytes): CUDA, frameworks, other heavy packages (≥ 4 MiB), and two light ones (six: 8-16 KiB,
# idna: 64-128 KiB: two light groups)
STACK: dict[str, tuple[str, int]] = {
    "nvidia-cudnn-cu12": ("9.1.0.70", 660 * MIB),
    "torch": ("2.5.1", 900 * MIB),
    "triton": ("3.1.0", 200 * MIB),
    "pyarrow": ("18.0.0", 40 * MIB),
    "numpy": ("2.3.0", 16 * MIB),
    "pandas": ("2.2.3", 12 * MIB),
    "transformers": ("4.46.3", 10 * MIB),
    "six": ("1.16.0", 11_000),
    "idna": ("3.10", 70_000),
}
FIRST = [
    "nvidia-cudnn-cu12",
    "torch",
    "triton",
    "pyarrow",
    "numpy",
    "pandas",
    "transformers",
    "packages-5",
    "packages-7",
]


def _resolver(**changes: tuple[str, int] | None) -> FakeResolver:
    """The stack with some packages changed (None: removed), each with one wheel of its size."""
    stack = {**STACK, **changes}
    packages = []
    for name, entry in sorted(stack.items()):
        if entry is not None:
            locked = package(name, entry[0])
            packages.append(replace(locked, wheels=(replace(locked.wheels[0], size=entry[1]),)))
    return FakeResolver({AMD64: packages})


def _relock(spec: Spec, **changes: tuple[str, int] | None) -> lockfile.Lock:
    outcome = lock_project(spec, _resolver(**changes), options=LockOptions(upgrade=True))
    assert outcome.written
    return outcome.lock


def _layers(lock: lockfile.Lock) -> list[str]:
    return list(lock.target(AMD64).layers or ())


def _planned(lock: lockfile.Lock) -> list[str]:
    return [layer.label for layer in plan_image(lock, "demo", AMD64).layers]


def _keys(lock: lockfile.Lock) -> list[str]:
    return [layer.key for layer in plan_image(lock, "demo", AMD64).layers]


def _shared(old: lockfile.Lock, new: lockfile.Lock) -> int:
    """How many layers from the bottom the engine still holds for the new image (its chain is the old one's)."""
    count = 0
    for before, after in zip(_keys(old), _keys(new), strict=False):
        if before != after:
            break
        count += 1
    return count


@pytest.fixture
def spec(sample: Callable[[str], Path]) -> Spec:
    return load_spec(sample("basic"))


def test_a_first_lock_lists_its_layers_in_stability_order(spec: Spec) -> None:
    lock = lock_project(spec, _resolver()).lock
    assert lock.image_layout == lockfile.IMAGE_LAYOUT == 3
    assert _layers(lock) == FIRST, "CUDA, frameworks, other heavy packages biggest first, light groups"
    assert _planned(lock) == ["venv", *FIRST, "lock"], "the venv below the list, the lock above it"
    unlisted = replace(lock, targets=(replace(lock.target(AMD64), layers=None),))
    assert _planned(unlisted) == _planned(lock), "the first order is layout 2's"
    text = spec.lock_path.read_text()
    assert '\nlayers = [\n    "nvidia-cudnn-cu12",\n    "torch",\n' in text, "one name per line: a move is a small diff"
    assert lockfile.read(spec.lock_path) == lock


def test_a_relock_keeps_unchanged_layers_in_place_and_puts_the_changed_and_new_on_top(spec: Spec) -> None:
    first = lock_project(spec, _resolver()).lock
    # scipy added, and it moves numpy: the rest keeps its order; scipy and numpy go on top, biggest first
    heavy = _relock(spec, scipy=("1.14.1", 41 * MIB), numpy=("2.2.6", 16 * MIB))
    assert _layers(heavy) == [*FIRST[:4], *FIRST[5:], "scipy", "numpy"]
    assert _shared(first, heavy) == 5, "the engine keeps the venv and the layers below numpy's old place"
    # scipy removed again (numpy stays): it vanishes, and nothing below it moves
    removed = _relock(spec, numpy=("2.2.6", 16 * MIB))
    assert _layers(removed) == [*FIRST[:4], *FIRST[5:], "numpy"]
    assert _shared(heavy, removed) == 1 + len(FIRST) - 1, "the venv and the unchanged: numpy and the lock are sent"
    # numpy bumped once more: it is on top already, so only it and the lock are sent
    bumped = _relock(spec, numpy=("2.2.5", 16 * MIB))
    assert _layers(bumped) == _layers(removed) and _shared(removed, bumped) == len(FIRST)
    # a light package joins idna's group: that group moves on top, the others stay
    light = _relock(spec, numpy=("2.2.5", 16 * MIB), tqdm=("4.67.1", 80_000))
    assert _layers(light) == [*FIRST[:4], *FIRST[5:7], "packages-7", "numpy", "packages-5"]
    assert _shared(bumped, light) == 1 + 6, "the venv and the six layers below idna's group"


def test_a_relock_is_a_function_of_the_new_resolution_and_the_previous_lock(spec: Spec) -> None:
    lock_project(spec, _resolver())
    previous = spec.lock_path.read_bytes()
    heavy = _relock(spec, scipy=("1.14.1", 41 * MIB), numpy=("2.2.6", 16 * MIB))
    written = spec.lock_path.read_bytes()
    spec.lock_path.write_bytes(previous)
    again = _relock(spec, scipy=("1.14.1", 41 * MIB), numpy=("2.2.6", 16 * MIB))
    assert again == heavy and spec.lock_path.read_bytes() == written
    target = heavy.target(AMD64)
    assert relocked_order(target, "3.11", None) == (*FIRST[:3], "scipy", *FIRST[3:]), "no previous: layout 2's order"


def test_a_torch_bump_puts_cuda_and_frameworks_back_at_the_bottom(spec: Spec) -> None:
    """Everything above the first changed layer is sent again whatever its order: the CUDA libraries and frameworks
    go lowest among it, so the next small change does not send 1.7 GB above it again."""
    lock_project(spec, _resolver())
    _relock(spec, scipy=("1.14.1", 41 * MIB), numpy=("2.2.6", 16 * MIB))
    bumped = _relock(
        spec,
        scipy=("1.14.1", 41 * MIB),
        numpy=("2.2.6", 16 * MIB),
        torch=("2.6.0", 910 * MIB),
        **{"nvidia-cudnn-cu12": ("9.1.0.71", 660 * MIB)},
    )
    # the CUDA and framework tiers back in stability order; the rest in its old order (scipy and numpy still on top)
    assert _layers(bumped) == [*FIRST[:4], *FIRST[5:], "scipy", "numpy"]
    assert _layers(bumped)[-1] != "torch"


def test_the_lock_hash_covers_the_layer_order(spec: Spec) -> None:
    lock = lock_project(spec, _resolver()).lock
    reordered = replace(lock, targets=(replace(lock.target(AMD64), layers=tuple(reversed(FIRST))),))
    assert reordered.lock_hash != lock.lock_hash
    assert lockfile.loads(lockfile.dumps(reordered)) == reordered
    assert _planned(reordered) == ["venv", *reversed(FIRST), "lock"], "the image follows the list"
    edited = spec.lock_path.read_text().replace('    "torch",\n    "triton",', '    "triton",\n    "torch",')
    with pytest.raises(LockfileError, match="edited by hand"):
        lockfile.loads(edited)


def test_a_slot_the_list_leaves_out_goes_on_top_in_stability_order(spec: Spec) -> None:
    lock = lock_project(spec, _resolver()).lock
    partial = replace(lock, targets=(replace(lock.target(AMD64), layers=("packages-5", "torch")),))
    rest = [name for name in FIRST if name not in ("packages-5", "torch")]
    assert _planned(lockfile.loads(lockfile.dumps(partial))) == ["venv", "packages-5", "torch", *rest, "lock"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda text: text.replace('    "torch",\n', '    "torch",\n    "torch",\n'),
            r"layers: names 'torch' more than once",
        ),
        (lambda text: text.replace('    "torch",\n', '    "not a name!",\n'), r"layers\[1\]: .*not a name"),
        (lambda text: text.replace("image-layout = 3", "image-layout = 2"), r"layers: needs image-layout = 3"),
        (lambda text: text.replace("image-layout = 3", "image-layout = 4"), r"4 is not a layout this envlock builds"),
    ],
)
def test_a_bad_layer_list_is_refused_when_the_lock_is_read(
    spec: Spec, edit: Callable[[str], str], message: str
) -> None:
    lock_project(spec, _resolver())
    spec.lock_path.write_text(edit(spec.lock_path.read_text()))
    with pytest.raises(LockfileError, match=message) as refused:
        lockfile.read(spec.lock_path)
    assert "\n" not in refused.value.message and refused.value.hint


def test_a_list_naming_a_layer_the_lock_has_not_is_refused_when_planned(spec: Spec) -> None:
    lock = lock_project(spec, _resolver()).lock
    odd = replace(lock, targets=(replace(lock.target(AMD64), layers=("torch", "scipy")),))
    read = lockfile.loads(lockfile.dumps(odd))  # well-formed, and its hash holds
    with pytest.raises(LockfileError, match=r"layers for linux/amd64 name 'scipy', which is not a layer") as refused:
        plan_image(read, "demo", AMD64)
    assert "\n" not in refused.value.message and "envlock lock" in (refused.value.hint or "")


@pytest.mark.parametrize("layout", [None, 2])
def test_an_earlier_layout_keeps_its_lock_and_image_until_something_changes(spec: Spec, layout: int | None) -> None:
    """A layout 1 or 2 lock is not rewritten for the layout alone (its image ID would move for nothing); the next
    real change writes layout 3, keeping in place what the earlier image has below the first change."""
    first = lock_project(spec, _resolver()).lock
    earlier = replace(first, image_layout=layout, targets=(replace(first.target(AMD64), layers=None),))
    lockfile.write(spec.lock_path, earlier)
    before = spec.lock_path.read_bytes()
    outcome = lock_project(spec, _resolver(), options=LockOptions(upgrade=True))
    assert outcome.resolved and not outcome.written and spec.lock_path.read_bytes() == before
    assert "layers" not in before.decode() and ("image-layout" in before.decode()) == (layout is not None)
    heavy = _relock(spec, scipy=("1.14.1", 41 * MIB), numpy=("2.2.6", 16 * MIB))
    assert heavy.image_layout == 3
    if layout == 2:  # same groups as layout 3: only what changed moves
        assert _planned(earlier) == ["venv", *FIRST, "lock"]
        assert _layers(heavy) == [*FIRST[:4], *FIRST[5:], "scipy", "numpy"]
        assert _shared(earlier, heavy) == 5
    else:  # layout 1: heavy packages by name, light groups by the hash of their names (other groups now)
        assert _planned(earlier)[1:5] == ["nvidia-cudnn-cu12", "torch", "triton", "numpy"]
        assert _layers(heavy)[:3] == FIRST[:3] and _shared(earlier, heavy) == 4


def test_packages_with_no_wheel_for_the_platform_are_left_out_of_the_list(spec: Spec) -> None:
    """`envlock lock` still locks them (as before); the build refuses them, naming the package."""
    resolver = _resolver()
    sdist_only = LockedPackage("legacy", "1.0", ())
    resolver = FakeResolver({AMD64: [*resolver.by_platform[AMD64], sdist_only]})
    lock = lock_project(spec, resolver).lock
    assert _layers(lock) == FIRST and "legacy" in {p.name for p in lock.target(AMD64).packages}


def test_a_heavy_package_named_like_a_light_group_is_refused_not_left_out(spec: Spec) -> None:
    resolver = _resolver(**{"packages-7": ("1.0", 5 * MIB)})
    with pytest.raises(LockfileError, match="package packages-7 has the name of a light group"):
        lock_project(spec, resolver)
