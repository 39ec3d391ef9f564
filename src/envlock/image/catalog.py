"""The project's own memory of its images: `.envlock/images.json`, lock hash → image ID and pushed digests."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envlock.fsutil import atomic_write_text, no_space_is_an_error, read_json
from envlock.lock.targets import host_platform
from envlock.paths import ProjectLayout

if TYPE_CHECKING:
    from envlock.engine.docker import Engine


def read_images(project_dir: Path) -> dict[str, Any]:
    """The project's .envlock/images.json: lock hash → image ID, reference, base, pushed digests."""
    path = ProjectLayout(project_dir).images
    known = read_json(path)
    return dict(known) if isinstance(known, dict) else {}


def platform_tag(short_hash: str, platform: str) -> str:
    """A lock's image tag for a platform: the lock-hash prefix for linux/amd64 (as always), with the architecture
    appended for the others (`3f9a1c2b4d5e-arm64`): one engine holds both without one tag stealing the other's."""
    return short_hash if platform == "linux/amd64" else f"{short_hash}-{platform.rsplit('/', 1)[-1]}"


def record_image(
    project_dir: Path,
    lock_hash: str,
    image_id: str,
    reference: str,
    base: str,
    *,
    pushed: str | None = None,
    platform: str | None = None,
) -> Path:
    """Remember, in the project's .envlock/images.json, which image (and registry digest) a lock gave. The host
    platform's image is the entry's own (what `run` uses here); every platform's is kept under `platforms`."""
    path = ProjectLayout(project_dir).images
    known = read_images(project_dir)
    entry = known.setdefault(lock_hash, {})
    if platform is not None:
        mine = entry.setdefault("platforms", {}).setdefault(platform, {})
        if mine.get("image-id") != image_id:
            mine.clear()
        mine.update({"image-id": image_id, "reference": reference})
        if pushed and pushed not in mine.setdefault("pushed", []):
            mine["pushed"].append(pushed)
    if platform is None or platform == host_platform():
        entry.update({"image-id": image_id, "reference": reference, "base": base})
        if pushed and pushed not in entry.setdefault("pushed", []):
            entry["pushed"].append(pushed)
    text = json.dumps(known, indent=2, sort_keys=True) + "\n"
    with contextlib.suppress(OSError, ValueError):
        if path.read_text(encoding="utf-8") == text:
            return path  # a no-op build: nothing to rewrite (nor fsync)
    with no_space_is_an_error(f"recording the image in {path}", (path.parent,)):
        atomic_write_text(path, text)
    return path


def record_index(project_dir: Path, lock_hash: str, index: str) -> Path:
    """Remember the image index pushed over a lock's per-platform images: as `index`, and among the host entry's
    pushed digests (pulling it by digest gives the engine its own platform's image, checked by ID as any other)."""
    path = ProjectLayout(project_dir).images
    known = read_images(project_dir)
    entry = known.setdefault(lock_hash, {})
    entry["index"] = index
    if index not in entry.setdefault("pushed", []):
        entry["pushed"].append(index)
    with no_space_is_an_error(f"recording the image index in {path}", (path.parent,)):
        atomic_write_text(path, json.dumps(known, indent=2, sort_keys=True) + "\n")
    return path


@dataclass(frozen=True)
class PinnedImage:
    """The image a run uses, by ID, with what is known of it."""

    image_id: str
    reference: str
    repo_digests: tuple[str, ...] = ()


@dataclass(frozen=True)
class Built:
    """What a build made or found (see envlock.image.build.BuildOutcome)."""

    image_id: str
    reference: str
    base_diff_id: str


def image_for_lock(
    lock_hash: str, reference: str, *, engine: Engine, project_dir: Path, build: Callable[[], Built]
) -> PinnedImage:
    """The lock's image by ID: the engine's when it holds it, else built now (and remembered in images.json)."""
    # The usual case, the image exists and is the one a build here made: one inspect, no build machinery
    # imported (start-up time). Anything else (no tag, no record, a tag moved to another image: a forged or
    # relabelled one) goes through the build, which checks the tagged image by content and rebuilds it if need be.
    image_id = engine.image_id(reference)
    recorded = read_images(project_dir).get(lock_hash, {}).get("image-id")
    if image_id is None or image_id != recorded:
        built = build()
        record_image(project_dir, lock_hash, built.image_id, built.reference, built.base_diff_id)
        image_id = built.image_id
    return PinnedImage(image_id, reference, tuple(pushed_digests(project_dir, lock_hash)))


def pushed_digests(project_dir: Path, lock_hash: str) -> list[str]:
    """The registry digests (`repo@sha256:…`) a lock's image was pushed under, oldest first."""
    pushed = read_images(project_dir).get(lock_hash, {}).get("pushed", [])
    return [str(p) for p in pushed] if isinstance(pushed, list) else []


def recorded_for_platform(project_dir: Path, lock_hash: str, platform: str) -> tuple[str | None, tuple[str, ...]]:
    """The image ID a lock gave for `platform` and the registry digests it can be pulled by (its own, then the
    lock's image index); (None, ()) when none is recorded for that platform. Files written before per-platform
    entries existed name only the building host's image, taken as it is."""
    entry = read_images(project_dir).get(lock_hash, {})
    platforms = entry.get("platforms") if isinstance(entry, dict) else None
    mine = platforms.get(platform) if isinstance(platforms, dict) else entry
    if not isinstance(mine, dict) or not isinstance(mine.get("image-id"), str):
        return None, ()
    pushed = mine.get("pushed", [])
    digests = [str(p) for p in pushed] if isinstance(pushed, list) else []
    index = entry.get("index")
    return str(mine["image-id"]), (*digests, *([str(index)] if isinstance(index, str) and index not in digests else []))
