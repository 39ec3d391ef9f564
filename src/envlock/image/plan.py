"""The image plan (which layers, by content key) and its assembly: layers, config, archive."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property, partial
from pathlib import Path
from typing import Any

from envlock import __version__
from envlock.engine.runtimes import LOCK_HASH_LABEL
from envlock.image.catalog import platform_tag
from envlock.image.layers import Layer, LayerStore, write_layer
from envlock.image.sbom import SBOM_PATH, sbom_json
from envlock.image.staging import (
    VENV,
    Overlap,
    VenvLayout,
    install_local,
    install_wheel,
    installed_files,
    overlaps_of,
)
from envlock.image.wheels import WheelCache
from envlock.lock import lockfile
from envlock.lock.layering import ordered_slots
from envlock.lock.lockfile import FALLBACK_EPOCH, Lock
from envlock.lock.resolve import LockedFile
from envlock.lock.targets import ARCHITECTURES
from envlock.report import Report

# Bumped whenever the bytes a layer is made of change for the same inputs (paths, metadata, layout).
# 2: each layer's mtime is its own wheels' newest upload time, not the whole lock's.
LAYER_FORMAT = 2


LOCK_PATH = "etc/envlock/envlock.lock"


# Bumped whenever the lock layer's bytes change for the same lock: the lock's TOML (lockfile.dumps) or the SBOM
# (image/sbom.py). The lock layer is keyed by what decides those bytes, so a no-op build renders neither.
LOCK_LAYER_FORMAT = 1


@dataclass(frozen=True)
class LayerPlan:
    """One layer to make: a label, the wheels it installs, its files' mtime, and a key naming its content."""

    label: str
    wheels: tuple[LockedFile, ...]
    key: str
    epoch: int


@dataclass(frozen=True)
class ImagePlan:
    """What `envlock build` will make, before anything is made."""

    repository: str
    tag: str
    platform: str
    lock: Lock
    layers: tuple[LayerPlan, ...]
    embeds_sbom: bool = True  # the CycloneDX JSON at SBOM_PATH (image/sbom.py), rendered only when first needed

    @cached_property
    def sbom(self) -> str:
        """The SBOM the lock layer holds ("" when the plan embeds none): rendered on first use, it takes longer
        than everything else a no-op build does."""
        return sbom_json(self.lock, self.platform) if self.embeds_sbom else ""

    @property
    def lock_text(self) -> str:
        """The lock as embedded in the image: its canonical text, as `envlock lock` writes it.

        Comments, blank lines or reordered keys in someone's envlock.lock keep its lock-hash (and so its tag);
        embedding the file byte for byte would have given the same lock another image ID.
        """
        return lockfile.dumps(self.lock)

    @property
    def reference(self) -> str:
        """`name:tag`."""
        return f"{self.repository}:{self.tag}"

    @property
    def wheels(self) -> list[LockedFile]:
        """Every wheel the image installs."""
        return [w for layer in self.layers for w in layer.wheels]


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps([LAYER_FORMAT, *parts], sort_keys=True).encode()).hexdigest()


def _epoch(wheels: list[LockedFile]) -> int:
    """The newest upload time among these wheels (a fixed date when the index gave none)."""
    times = [int(w.upload_time.timestamp()) for w in wheels if w.upload_time is not None]
    return max(times, default=FALLBACK_EPOCH)


def plan_image(lock: Lock, repository: str, platform: str) -> ImagePlan:
    """The venv, the package layers in the lock's order (lock/layering.py: by stability, or as a layout 3 lock lists
    them), the local packages, the lock."""
    layers = [LayerPlan("venv", (), _key(lock.python, FALLBACK_EPOCH, "venv"), FALLBACK_EPOCH)]
    for slot in ordered_slots(lock, platform):
        # A layer's mtime comes from its own wheels only: adding a package uploaded yesterday moves the lock's epoch,
        # and must not re-make (and re-send) the 3 GB torch layer below it.
        epoch = _epoch(list(slot.wheels))
        content = slot.wheels[0].sha256 if slot.own else [wheel.sha256 for wheel in slot.wheels]
        layers.append(LayerPlan(slot.name, slot.wheels, _key(lock.python, epoch, content), epoch))
    if lock.local_packages:
        # Metadata only (the code is mounted): a fixed mtime, so a new upload elsewhere never re-makes it.
        local = [p.as_dict() for p in lock.local_packages]
        layers.append(LayerPlan("local", (), _key(lock.python, FALLBACK_EPOCH, "local", local), FALLBACK_EPOCH))
    layers.append(LayerPlan("lock", (), lock_layer_key(lock, platform), lock.source_date_epoch))
    return ImagePlan(repository, platform_tag(lock.short_hash, platform), platform, lock, tuple(layers))


def lock_layer_key(lock: Lock, platform: str) -> str:
    """The lock layer's key: everything its two files are made from (the whole lock, meta included, the platform,
    this envlock and its SBOM library), not the rendered texts, so a no-op build renders neither."""
    from cyclonedx import __version__ as cyclonedx_version  # noqa: PLC0415  (the package alone, not the library)

    identity = [lock.lock_hash, lock.input_hash, lock.resolver, lock.envlock_version, lock.source_date_epoch]
    return _key("lock", LOCK_LAYER_FORMAT, *identity, platform, __version__, cyclonedx_version)


def layer_key(spec: LayerPlan, layout: VenvLayout) -> str:
    """The layer store's key of one planned layer on this venv layout."""
    # The venv's pyvenv.cfg and links name the base's interpreter: its layer depends on where that lives.
    return _key(spec.key, layout.home) if spec.label == "venv" else spec.key


def overlap_warning(overlap: Overlap) -> str:
    """One line naming the two packages, how many files they share and which copies the image keeps."""
    shared = len(overlap.paths)
    example = overlap.differing[0] if overlap.differing else overlap.paths[0]
    differ = f", {len(overlap.differing)} with other bytes" if overlap.differing else " (identical bytes)"
    return (
        f"warning: {overlap.earlier} and {overlap.later} both install {shared} file{'s' if shared != 1 else ''}"
        f"{differ}, e.g. {example}; {overlap.later}'s are kept (install order: the image's layers bottom up, "
        "as the lock orders them; later wins, as with pip)"
    )


def identical_overlaps_note(overlaps: list[Overlap]) -> str:
    """One line for every pair that installs the same files with the same bytes (a namespace package's
    `__init__.py`, as the CUDA wheels' `nvidia/`): harmless, so named once, not warned about pair by pair."""
    files = sorted({path for overlap in overlaps for path in overlap.paths})
    pairs = len(overlaps)
    named = ", ".join(f"{overlap.earlier}/{overlap.later}" for overlap in overlaps[:3])
    more = f" and {pairs - 3} more" if pairs > 3 else ""
    return (
        f"note: {pairs} pair{'s' if pairs != 1 else ''} of packages ({named}{more}) install the same {len(files)} "
        f"file{'s' if len(files) != 1 else ''} with identical bytes (e.g. {files[0]}): the image holds one copy"
    )


def wheels_to_make(plan: ImagePlan, store: LayerStore, layout: VenvLayout | None = None) -> list[LockedFile]:
    """The wheels of the layers the store lacks: a rebuild fetches and hashes only these, not 3 GB of CUDA."""
    layout = layout or VenvLayout(plan.lock.python)
    return [wheel for spec in plan.layers if store.get(layer_key(spec, layout)) is None for wheel in spec.wheels]


def make_layers(
    plan: ImagePlan,
    cache: WheelCache,
    store: LayerStore,
    report: Report,
    layout: VenvLayout | None = None,
    *,
    fetched: Callable[[], object] = lambda: None,
) -> list[Layer]:
    """Every layer of the plan, from the store when its key is there, else made from verified wheels.

    `fetched` waits until the wheels of the layers to make are in the cache (fetched in the background meanwhile):
    the layers made of no wheel (the lock's, with its SBOM) and the listings of the wheels cached already are made
    before it is called, so a new package's download overlaps them.
    """
    layout = layout or VenvLayout(plan.lock.python)
    keys = [layer_key(spec, layout) for spec in plan.layers]
    layers = {key: found for key in keys if (found := store.get(key)) is not None}
    missing = [(spec, key) for spec, key in zip(plan.layers, keys, strict=True) if key not in layers]

    def make(spec: LayerPlan, key: str) -> None:
        report(f"making layer {spec.label}")
        layers[key] = store.put(key, partial(_made, plan, spec, cache, layout))

    for spec, key in missing:
        if not spec.wheels:
            make(spec, key)
    if missing:
        # Checked whenever a layer is made (the lock's alone too: cached layers of two builds may meet first here).
        # Which files two wheels both install needs only their listings: a cached layer's wheels are not hashed
        # (GBs of CUDA wheels for one light package), and one no longer cached is left out of this check.
        listed: dict[str, dict[str, int]] = {}
        _list_cached(plan.wheels, cache, layout, listed)
        fetched()
        _list_cached(plan.wheels, cache, layout, listed)
        overlaps = overlaps_of([(wheel.name, listed[wheel.sha256]) for wheel in plan.wheels if wheel.sha256 in listed])
        for overlap in overlaps:
            if overlap.differing:
                report(overlap_warning(overlap))
        if same := [overlap for overlap in overlaps if not overlap.differing]:
            report(identical_overlaps_note(same))
    for spec, key in missing:
        if spec.wheels:
            make(spec, key)
    return [layers[key] for key in keys]


def _list_cached(
    wheels: list[LockedFile], cache: WheelCache, layout: VenvLayout, listed: dict[str, dict[str, int]]
) -> None:
    """Add the listing of each wheel the cache holds (not yet listed) to `listed`, by sha256."""
    for wheel in wheels:
        if wheel.sha256 not in listed and (path := cache.cached(wheel)) is not None:
            listed[wheel.sha256] = installed_files(path, layout)


def _made(plan: ImagePlan, spec: LayerPlan, cache: WheelCache, layout: VenvLayout, out: Path) -> Layer:
    """One layer of the plan, made into `out` from a scratch tree."""
    with tempfile.TemporaryDirectory(prefix="envlock-stage-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        if spec.label == "lock":
            (root / LOCK_PATH).parent.mkdir(parents=True)
            (root / LOCK_PATH).write_text(plan.lock_text, encoding="utf-8")
            if plan.sbom:
                (root / SBOM_PATH).write_text(plan.sbom, encoding="utf-8")
            return write_layer(root, out, spec.epoch)
        if spec.label == "venv":
            layout.skeleton(root)
        if spec.label == "local":
            for package in plan.lock.local_packages:
                install_local(package, root, layout)
        for wheel in spec.wheels:
            install_wheel(cache.require(wheel), wheel.name, root, layout)
        return write_layer(root, out, spec.epoch, prefix=VENV.lstrip("/"))


def image_config(plan: ImagePlan, base_diff_ids: list[str], base_env: dict[str, str], layers: list[Layer]) -> bytes:
    """The image config JSON, canonical: its sha256 is the image ID."""
    created = datetime.fromtimestamp(plan.lock.source_date_epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    target = plan.lock.target(plan.platform)
    path = f"{VENV}/bin:" + base_env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env = {
        **base_env,
        "PATH": path,
        "VIRTUAL_ENV": VENV,
        "LANG": base_env.get("LANG", "C.UTF-8"),
        "ENVLOCK_LOCK": f"/{LOCK_PATH}",
        "ENVLOCK_LOCK_HASH": plan.lock.lock_hash,
        "ENVLOCK_PLATFORM": plan.platform,
    }
    labels = {
        "org.opencontainers.image.created": created,
        LOCK_HASH_LABEL: plan.lock.lock_hash,
        "dev.envlock.version": __version__,
        "dev.envlock.platform": plan.platform,
        "dev.envlock.cuda": target.cuda.version if target.cuda.kind == "cuda" else "cpu",
        "dev.envlock.base": ",".join(base_diff_ids),
        **({"dev.envlock.sbom": f"/{SBOM_PATH}"} if plan.embeds_sbom else {}),
    }
    history = [{"created": created, "created_by": "envlock base", "comment": d} for d in base_diff_ids]
    history += [{"created": created, "created_by": f"envlock layer {spec.label}"} for spec in plan.layers]
    config: dict[str, Any] = {
        "architecture": ARCHITECTURES[plan.platform],
        "os": "linux",
        "created": created,
        "config": {
            "Env": [f"{k}={v}" for k, v in sorted(env.items())],
            "Labels": labels,
            "WorkingDir": "/",
            "Cmd": ["python"],
        },
        "rootfs": {"type": "layers", "diff_ids": [*base_diff_ids, *(layer.diff_id for layer in layers)]},
        "history": history,
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
