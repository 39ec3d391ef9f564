"""The image plan (which layers, by content key) and its assembly: layers, config, archive."""

from __future__ import annotations

import hashlib
import json
import re
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
    choose_wheel,
    install_local,
    install_wheel,
    installed_files,
    overlaps_of,
    tag_rank,
)
from envlock.image.wheels import WheelCache
from envlock.lock import lockfile
from envlock.lock.lockfile import FALLBACK_EPOCH, Lock
from envlock.lock.resolve import LockedFile
from envlock.lock.targets import ARCHITECTURES, Target
from envlock.report import Report

# Bumped whenever the bytes a layer is made of change for the same inputs (paths, metadata, layout).
# 2: each layer's mtime is its own wheels' newest upload time, not the whole lock's.
LAYER_FORMAT = 2


LOCK_PATH = "etc/envlock/envlock.lock"


# Bumped whenever the lock layer's bytes change for the same lock: the lock's TOML (lockfile.dumps) or the SBOM
# (image/sbom.py). The lock layer is keyed by what decides those bytes, so a no-op build renders neither.
LOCK_LAYER_FORMAT = 1


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


def stability(name: str) -> int:
    """0 for CUDA libraries, 1 for frameworks, 2 for anything else: the order of own layers, bottom up."""
    return 0 if CUDA_NAMES.match(name) else 1 if FRAMEWORK_NAMES.match(name) else 2


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
    """Layers by stability: the venv, CUDA libraries, frameworks, other heavy packages (a wheel ≥ 4 MiB, the biggest
    first) one layer each, then the light packages in LIGHT_GROUPS layers by wheel size, the local packages, the
    lock."""
    target = lock.target(platform)
    rank = tag_rank(Target(target.platform, lock.python, (2, 36)).wheel_tags())
    chosen = [(package.name, choose_wheel(package, rank)) for package in target.packages]
    by_size = sorted(chosen, key=lambda item: (stability(item[0]) == 2, -(item[1].size or 0), item[0]))
    own = {
        name for name, wheel in by_size[:OWN_LAYERS_MAX] if stability(name) < 2 or (wheel.size or 0) >= OWN_LAYER_BYTES
    }
    heavy: list[tuple[int, LayerPlan]] = []
    light: dict[int, list[LockedFile]] = {}
    for name, wheel in chosen:
        if name in own:
            epoch = _epoch([wheel])
            heavy.append((stability(name), LayerPlan(name, (wheel,), _key(lock.python, epoch, wheel.sha256), epoch)))
        else:
            group = light_group_by_name(name) if lock.image_layout is None else light_group(wheel.size)
            light.setdefault(group, []).append(wheel)
    # A layer's mtime comes from its own wheels only: adding a package uploaded yesterday moves the lock's epoch,
    # and must not re-make (and re-send) the 3 GB torch layer below it.
    layers = [LayerPlan("venv", (), _key(lock.python, FALLBACK_EPOCH, "venv"), FALLBACK_EPOCH)]
    layers += [layer for _, layer in sorted(heavy, key=_heavy_order if lock.image_layout else _heavy_order_by_name)]
    for group, wheels in sorted(light.items()):
        epoch = _epoch(wheels)
        key = _key(lock.python, epoch, [w.sha256 for w in wheels])
        layers.append(LayerPlan(f"packages-{group}", tuple(wheels), key, epoch))
    if lock.local_packages:
        # Metadata only (the code is mounted): a fixed mtime, so a new upload elsewhere never re-makes it.
        local = [p.as_dict() for p in lock.local_packages]
        layers.append(LayerPlan("local", (), _key(lock.python, FALLBACK_EPOCH, "local", local), FALLBACK_EPOCH))
    layers.append(LayerPlan("lock", (), lock_layer_key(lock, platform), lock.source_date_epoch))
    return ImagePlan(repository, platform_tag(lock.short_hash, platform), platform, lock, tuple(layers))


def _heavy_order_by_name(item: tuple[int, LayerPlan]) -> tuple[int, str]:
    """Layout 1: CUDA libraries, frameworks, then the other heavy packages, each tier by name."""
    return (item[0], item[1].label)


def _heavy_order(item: tuple[int, LayerPlan]) -> tuple[int, int, str]:
    """CUDA libraries, then frameworks, each by name; then the other heavy packages, the biggest wheel first."""
    tier, layer = item
    return (tier, -(layer.wheels[0].size or 0) if tier == 2 else 0, layer.label)


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
        "CUDA libraries, frameworks, other heavy packages by size, then the light ones' groups; later wins, "
        "as with pip)"
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
