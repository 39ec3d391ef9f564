"""The package layers of a lock's image (its slots), grouped from the lock alone, and their order bottom up.

A slot is a package with a layer of its own (named after it) or a group of light packages (`packages-N`). Layouts 1
and 2 order the slots by stability; layout 3 locks list their order (`layers` of each platform), which `envlock lock`
derives from the previous lock (`relocked_order`), so the layers a change leaves alone stay where the engine has them.
The venv layer below the slots and the local packages' and the lock's layers above them are not slots: they never
move.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from envlock.errors import LockfileError, NoWheelError
from envlock.lock.lockfile import IMAGE_LAYOUT, LISTED_LAYOUT, Lock, TargetLock
from envlock.lock.resolve import LockedFile
from envlock.lock.targets import Target, choose_wheel, tag_rank

# Layers by stability, bottom up: a layer changed re-sends every layer above it (the engine finds a stack by its
# chain of layers), so what changes least goes first. CUDA libraries, then the frameworks built on them (each tier
# by name: they move together), then the other heavy packages (a wheel of OWN_LAYER_BYTES or more), one layer each,
# the biggest wheel first: with any of them as likely to change as any other, the bytes re-sent are fewest when the
# big ones sit low (numpy, pandas, pyarrow, sympy, transformers and hf-xet of the torch + transformers stack: a change
# to one re-sends 189 MB on average, 281 MB by name); then the light packages, grouped the same way.
CUDA_NAMES = re.compile(r"^(nvidia-.+|cuda-.+)$")
FRAMEWORK_NAMES = re.compile(
    r"^(torch|torchvision|torchaudio|triton|pytorch-triton|jax|jaxlib|tensorflow(-cpu)?|cupy(-cuda\d+x)?|xformers|"
    r"flash-attn|vllm)$"
)


# Packages whose wheel is at least this big get a layer of their own (so changing a small package re-makes
# only the small layer), the biggest first, up to OWN_LAYERS_MAX.
OWN_LAYER_BYTES = 4 * 1024 * 1024


OWN_LAYERS_MAX = 60


# The light packages share LIGHT_GROUPS layers by the size of their wheel, the biggest at the bottom. A changed layer
# re-sends every layer above it, and a load costs about as much per MB of the layers it is sent as per layer
# (dockerd 20.10: ~10 ms a MB, ~50 ms a layer); with any light package as likely to change as any other, the bytes
# re-sent are fewest when the big ones sit low. Group g holds the wheels of 4 MiB / 2^(g+1) up to 4 MiB / 2^g
# (packages-0: 2-4 MiB, ..., packages-6: 32-64 KiB; packages-7: smaller, or of no known size): power-of-two bands, so
# adding, removing or bumping one package re-makes its group only (two neighbouring groups when a bump carries its
# wheel across a band), and the grouping is a function of the lock alone (no index, no machine, no earlier build),
# so the same lock gives the same image everywhere. On the torch + transformers + datasets stack (34 light
# packages), a light change re-sends ~0.29 s of load on average, 0.52 s with groups by the hash of the name.
LIGHT_GROUPS = 8


# A slot's tier: CUDA libraries, frameworks, other heavy packages (each a layer of its own), light groups.
CUDA, FRAMEWORK, HEAVY, LIGHT = 0, 1, 2, 3


def stability(name: str) -> int:
    """0 for CUDA libraries, 1 for frameworks, 2 for anything else: the order of own layers, bottom up."""
    return CUDA if CUDA_NAMES.match(name) else FRAMEWORK if FRAMEWORK_NAMES.match(name) else HEAVY


def light_group_by_name(name: str) -> int:
    """Layout 1 (locks that name no image layout): the light layer the sha256 of the package's name picks."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % LIGHT_GROUPS


def light_group(size: int | None) -> int:
    """The light layer a wheel of `size` bytes goes to: from its own size alone, so its neighbours stay put when it
    comes or goes (0 for the biggest; LIGHT_GROUPS - 1 for the smallest, and for a size the index did not give)."""
    if not size:
        return LIGHT_GROUPS - 1
    band = (OWN_LAYER_BYTES - 1).bit_length() - size.bit_length()  # 0 for [2 MiB, 4 MiB), 1 for [1 MiB, 2 MiB), ...
    return min(max(band, 0), LIGHT_GROUPS - 1)


@dataclass(frozen=True)
class Slot:
    """One package layer: its name (the package's, or `packages-N`), its tier, and the wheels it installs."""

    name: str
    tier: int
    wheels: tuple[LockedFile, ...]

    @property
    def own(self) -> bool:
        """One package with a layer of its own (not a light group)."""
        return self.tier != LIGHT

    @property
    def content(self) -> tuple[str, ...]:
        """What the layer is made of: its wheels' sha256s (the same content makes the same layer)."""
        return tuple(wheel.sha256 for wheel in self.wheels)


def package_slots(target: TargetLock, python: str, layout: int | None, *, installable_only: bool = False) -> list[Slot]:
    """The platform's slots in stability order: CUDA libraries, frameworks, other heavy packages (a wheel ≥ 4 MiB,
    the biggest first; by name in layout 1) one each, then the light packages in LIGHT_GROUPS groups by wheel size
    (by the hash of the name in layout 1). NoWheelError for a package with no wheel for the platform; with
    `installable_only`, such a package is left out instead (`envlock lock` orders the others; the build of a lock
    with a package that has none is refused, naming it)."""
    rank = tag_rank(Target(target.platform, python, (2, 36)).wheel_tags())
    chosen = []
    for package in target.packages:
        try:
            chosen.append((package.name, choose_wheel(package, rank)))
        except NoWheelError:
            if not installable_only:
                raise
    return _grouped(chosen, layout)


def _grouped(chosen: list[tuple[str, LockedFile]], layout: int | None) -> list[Slot]:
    by_size = sorted(chosen, key=lambda item: (stability(item[0]) == HEAVY, -(item[1].size or 0), item[0]))
    own = {
        name
        for name, wheel in by_size[:OWN_LAYERS_MAX]
        if stability(name) < HEAVY or (wheel.size or 0) >= OWN_LAYER_BYTES
    }
    heavy = [Slot(name, stability(name), (wheel,)) for name, wheel in chosen if name in own]
    heavy.sort(key=_by_name if layout is None else _by_size)
    light: dict[int, list[LockedFile]] = {}
    for name, wheel in chosen:
        if name not in own:
            group = light_group_by_name(name) if layout is None else light_group(wheel.size)
            light.setdefault(group, []).append(wheel)
    groups = [Slot(f"packages-{group}", LIGHT, tuple(wheels)) for group, wheels in sorted(light.items())]
    if layout is not None and layout >= LISTED_LAYOUT and (same := {s.name for s in heavy} & {s.name for s in groups}):
        # the list names layers: two of one name would leave one out of the image
        raise LockfileError(
            f"package {min(same)} has the name of a light group of the image's layers",
            hint="envlock cannot order this lock's layers by name: report it at envlock's issue tracker",
        )
    return heavy + groups


def _by_name(slot: Slot) -> tuple[int, str]:
    """Layout 1: CUDA libraries, frameworks, then the other heavy packages, each tier by name."""
    return (slot.tier, slot.name)


def _by_size(slot: Slot) -> tuple[int, int, str]:
    """CUDA libraries, then frameworks, each by name; then the other heavy packages, the biggest wheel first."""
    return (slot.tier, -(slot.wheels[0].size or 0) if slot.tier == HEAVY else 0, slot.name)


def ordered_slots(lock: Lock, platform: str) -> list[Slot]:
    """The platform's slots bottom up, as its image has them: a layout 3 lock's listed order (a slot it does not list
    goes on top, in stability order), else stability order."""
    return _in_listed_order(lock, platform, package_slots(lock.target(platform), lock.python, lock.image_layout))


def _in_listed_order(lock: Lock, platform: str, slots: list[Slot]) -> list[Slot]:
    target = lock.target(platform)
    if lock.image_layout is None or lock.image_layout < LISTED_LAYOUT or not target.layers:
        return slots
    by_name = {slot.name: slot for slot in slots}
    if unknown := [name for name in target.layers if name not in by_name]:
        raise LockfileError(
            f"envlock.lock's layers for {platform} name {unknown[0]!r}, which is not a layer of this lock's image "
            f"(its layers: {', '.join(by_name)})",
            hint="restore envlock.lock from version control, or delete it and run `envlock lock`",
        )
    listed = set(target.layers)
    return [by_name[name] for name in target.layers] + [slot for slot in slots if slot.name not in listed]


def relocked_order(target: TargetLock, python: str, previous: Lock | None) -> tuple[str, ...]:
    """The order a new lock records for a platform's slots, from the order the previous lock's image has them.

    A first lock (or a new platform, or another Python) is in stability order. Otherwise the slots the engine still
    holds stay at the bottom: every unchanged slot below the first one that changed or went away, in its old order.
    Everything above that point is re-sent however it is ordered, so it is ordered for the next change: CUDA
    libraries and frameworks lowest (the biggest, the least likely to move again: a torch bump must not leave 3 GB
    above the light groups), then the unchanged slots in their old order, then the changed and new ones on top, in
    stability order among themselves (what changed once is the likeliest to change again). Same target and same
    previous lock, same order.
    """
    fresh = package_slots(target, python, IMAGE_LAYOUT, installable_only=True)
    platforms = {t.platform for t in previous.targets} if previous else set()
    if previous is None or target.platform not in platforms or previous.python != python:
        return tuple(slot.name for slot in fresh)
    now = {slot.name: slot for slot in fresh}
    earlier = previous.target(target.platform)
    before = _in_listed_order(
        previous, target.platform, package_slots(earlier, previous.python, previous.image_layout, installable_only=True)
    )
    unchanged = [slot.name for slot in before if slot.name in now and now[slot.name].content == slot.content]
    cut = next((i for i, slot in enumerate(before) if slot.name not in unchanged), len(before))
    held = unchanged[:cut]
    rest = [slot for slot in fresh if slot.name not in held]
    stable = [slot.name for slot in rest if slot.tier < HEAVY]
    kept = [name for name in unchanged[cut:] if now[name].tier >= HEAVY]
    moved = [slot.name for slot in rest if slot.tier >= HEAVY and slot.name not in kept]
    return (*held, *stable, *kept, *moved)
