"""`envlock build`: the lock's image, made deterministically, loaded into the engine, tagged last."""

from __future__ import annotations

import platform as host
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from envlock import base as base_mod
from envlock.engine import Engine
from envlock.errors import EngineError, EnvlockError
from envlock.image import LayerStore, image_config, make_layers, plan_image, write_archive
from envlock.lockfile import Lock
from envlock.wheels import Progress, WheelCache

Report = Callable[[str], None]
_HOST_PLATFORMS = {"x86_64": "linux/amd64", "aarch64": "linux/arm64", "arm64": "linux/arm64"}


def _silent(_: str) -> None:
    return None


def _no_progress(_name: str, _done: int, _total: int | None) -> None:
    return None


@dataclass(frozen=True)
class BuildOutcome:
    """The image a build produced or found."""

    reference: str
    image_id: str
    built: bool
    base_diff_id: str


def host_platform() -> str:
    """The platform this machine builds for without emulation."""
    return _HOST_PLATFORMS.get(host.machine(), host.machine())


def build_image(
    lock: Lock,
    lock_text: str,
    repository: str,
    platform: str,
    *,
    engine: Engine,
    cache: WheelCache,
    layers: LayerStore,
    bases: base_mod.BaseStore,
    no_cache: bool = False,
    report: Report = _silent,
    progress: Progress = _no_progress,
) -> BuildOutcome:
    """Build the image of `lock` for `platform`, or find it already built."""
    plan = plan_image(lock, lock_text, repository, platform)
    if not no_cache and (existing := engine.image_id(plan.reference)) is not None:
        labels = engine.image_labels(existing)
        if labels.get("dev.envlock.lock-hash") == lock.lock_hash:
            return BuildOutcome(plan.reference, existing, built=False, base_diff_id=labels.get("dev.envlock.base", ""))
        report(f"{plan.reference} exists but was not built from this lock; rebuilding")
    if platform != host_platform():
        raise EnvlockError(
            f"cannot build {platform} images on this {host_platform()} host yet",
            hint=f"build on a {platform} machine, or pass --platform {host_platform()}",
        )
    if base_mod.is_image_reference(lock.base.name):
        raise EnvlockError(
            f"building on an upstream image base ({lock.base.name}) is not supported yet",
            hint=f'use an envlock recipe base: base = "{base_mod.DEFAULT_BASE}"',
        )
    recipe = base_mod.load_recipe(lock.base.name)
    if recipe.sha256 != lock.base.sha256:
        raise EnvlockError(
            f"base recipe {recipe.name} changed since the lock was made",
            hint="run `envlock lock` to lock against the current recipe",
        )
    report(f"base {recipe.name} for {platform}")
    built_base = bases.ensure(recipe, platform)
    report(f"fetching {len(plan.wheels)} wheels")
    cache.ensure(plan.wheels, progress)
    with tempfile.TemporaryDirectory(prefix="envlock-image-") as tmp:
        # --no-cache: every layer made afresh (into this build's own scratch store); wheels are still verified.
        made = make_layers(plan, cache, LayerStore(Path(tmp) / "layers") if no_cache else layers, report)
        config = image_config(plan, [built_base.diff_id], {}, made)
        archive = Path(tmp) / "image.tar"
        parts = [(built_base.diff_id, built_base.tar), *((m.diff_id, m.tar) for m in made)]
        expected = write_archive(archive, config, parts)
        report(f"loading {plan.reference} into the engine")
        loaded = engine.load(archive)
    if loaded != expected:
        raise EngineError(
            f"the engine computed image ID {loaded}, not {expected}",
            hint="the engine rewrote the image; please report this with `docker version`",
        )
    # Tag last: a lock-hash tag only ever names a complete, verified image.
    engine.tag(loaded, plan.repository, plan.tag)
    return BuildOutcome(plan.reference, loaded, built=True, base_diff_id=built_base.diff_id)
