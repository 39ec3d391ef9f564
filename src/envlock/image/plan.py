"""The image plan (which layers, by content key) and its assembly: layers, config, archive."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from envlock import __version__
from envlock.image.catalog import platform_tag
from envlock.image.layers import Layer, LayerStore, write_layer
from envlock.image.staging import VENV, VenvLayout, choose_wheel, install_wheel
from envlock.image.wheels import WheelCache
from envlock.lock import lockfile
from envlock.lock.lockfile import Lock
from envlock.lock.resolve import LockedFile
from envlock.lock.targets import ARCHITECTURES, Target
from envlock.report import Report

# Bumped whenever the bytes a layer is made of change for the same inputs (paths, metadata, layout).
LAYER_FORMAT = 1


LOCK_PATH = "etc/envlock/envlock.lock"


HEAVY_NAMES = re.compile(
    r"^(torch|torchvision|torchaudio|triton|jax|jaxlib|tensorflow(-cpu)?|cupy(-cuda\d+x)?|xformers|"
    r"flash-attn|vllm|nvidia-.+)$"
)


# Packages whose wheel is at least this big get a layer of their own (so changing a small package re-makes
# only the small layer), the biggest first, up to OWN_LAYERS_MAX; every other package shares one layer.
OWN_LAYER_BYTES = 4 * 1024 * 1024


OWN_LAYERS_MAX = 60


@dataclass(frozen=True)
class LayerPlan:
    """One layer to make: a label, the wheels it installs, and a key naming its content."""

    label: str
    wheels: tuple[LockedFile, ...]
    key: str


@dataclass(frozen=True)
class ImagePlan:
    """What `envlock build` will make, before anything is made."""

    repository: str
    tag: str
    platform: str
    lock: Lock
    layers: tuple[LayerPlan, ...]

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


def plan_image(lock: Lock, repository: str, platform: str) -> ImagePlan:
    """Heavy packages (torch, nvidia-*, …, and any wheel ≥ 4 MiB) one layer each, below one layer of the rest."""
    target = lock.target(platform)
    tags = Target(target.platform, lock.python, (2, 36)).wheel_tags()
    chosen = [(package.name, choose_wheel(package, tags)) for package in target.packages]
    by_size = sorted(chosen, key=lambda item: (not HEAVY_NAMES.match(item[0]), -(item[1].size or 0), item[0]))
    own = {
        name
        for name, wheel in by_size[:OWN_LAYERS_MAX]
        if HEAVY_NAMES.match(name) or (wheel.size or 0) >= OWN_LAYER_BYTES
    }
    heavy: list[LayerPlan] = []
    light: list[LockedFile] = []
    for name, wheel in chosen:
        if name in own:
            heavy.append(LayerPlan(name, (wheel,), _key(lock.python, lock.source_date_epoch, wheel.sha256)))
        else:
            light.append(wheel)
    layers = [LayerPlan("venv", (), _key(lock.python, lock.source_date_epoch, "venv"))]
    layers += sorted(heavy, key=lambda layer: layer.label)
    if light:
        layers.append(
            LayerPlan("packages", tuple(light), _key(lock.python, lock.source_date_epoch, [w.sha256 for w in light]))
        )
    lock_key = _key(lock.source_date_epoch, hashlib.sha256(lockfile.dumps(lock).encode()).hexdigest())
    layers.append(LayerPlan("lock", (), lock_key))
    return ImagePlan(repository, platform_tag(lock.short_hash, platform), platform, lock, tuple(layers))


def make_layers(
    plan: ImagePlan, cache: WheelCache, store: LayerStore, report: Report, layout: VenvLayout | None = None
) -> list[Layer]:
    """Every layer of the plan, from the store when its key is there, else made from verified wheels."""
    layout = layout or VenvLayout(plan.lock.python)
    epoch = plan.lock.source_date_epoch
    layers = []
    for spec in plan.layers:
        # The venv's pyvenv.cfg and links name the base's interpreter: its layer depends on where that lives.
        key = _key(spec.key, layout.home) if spec.label == "venv" else spec.key
        if (found := store.get(key)) is not None:
            layers.append(found)
            continue
        report(f"making layer {spec.label}")

        def made(out: Path, spec: LayerPlan = spec) -> Layer:
            with tempfile.TemporaryDirectory(prefix="envlock-stage-") as tmp:
                root = Path(tmp) / "root"
                root.mkdir()
                if spec.label == "lock":
                    (root / LOCK_PATH).parent.mkdir(parents=True)
                    (root / LOCK_PATH).write_text(plan.lock_text, encoding="utf-8")
                    return write_layer(root, out, epoch)
                if spec.label == "venv":
                    layout.skeleton(root)
                for wheel in spec.wheels:
                    install_wheel(cache.require(wheel), wheel.name, root, layout)
                return write_layer(root, out, epoch, prefix=VENV.lstrip("/"))

        layers.append(store.put(key, made))
    return layers


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
        "dev.envlock.lock-hash": plan.lock.lock_hash,
        "dev.envlock.version": __version__,
        "dev.envlock.platform": plan.platform,
        "dev.envlock.cuda": target.cuda.version if target.cuda.kind == "cuda" else "cpu",
        "dev.envlock.base": ",".join(base_diff_ids),
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


def write_archive(out: BinaryIO, config: bytes, layer_tars: list[tuple[str, Path]]) -> str:
    """Stream a docker-archive (what `docker load` reads) with the config and every layer; returns the image ID."""
    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = [
        {
            "Config": f"{image_id.removeprefix('sha256:')}.json",
            "RepoTags": None,
            "Layers": [f"{diff_id.removeprefix('sha256:')}/layer.tar" for diff_id, _ in layer_tars],
        }
    ]
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        _add_bytes(archive, f"{image_id.removeprefix('sha256:')}.json", config)
        _add_bytes(archive, "manifest.json", json.dumps(manifest).encode())
        for diff_id, tar in layer_tars:
            archive.add(str(tar), arcname=f"{diff_id.removeprefix('sha256:')}/layer.tar")
    return image_id


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    archive.addfile(info, fileobj=io.BytesIO(data))
