"""`envlock build --platform all [--push]`: every platform of the lock built, each pushed, then one OCI image index
over their manifests (recorded in .envlock/images.json), so any host pulls its own platform by one digest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from envlock.image.build import Builder, BuildOutcome, ImageEvidence
from envlock.image.catalog import record_image, record_index
from envlock.image.plan import plan_image
from envlock.image.registry import PlatformManifest, Registry, push_index, split_target
from envlock.lock.lockfile import Lock


@dataclass(frozen=True)
class PlatformBuilt:
    """One platform's image, and where it was pushed (None: not pushed)."""

    platform: str
    outcome: BuildOutcome
    pushed: str | None


def build_platforms(
    lock: Lock,
    repository: str,
    platforms: Sequence[str],
    *,
    builder: Builder,
    project_dir: Path,
    evidence: ImageEvidence,
    no_cache: bool = False,
    push_to: tuple[Registry, str] | None = None,
) -> tuple[list[PlatformBuilt], str | None]:
    """Build (and push) each platform's image, each with its provenance; with several pushed, the index too.
    Returns the images and the index's `host/repo@sha256:…` (None when not pushed or one platform only)."""
    done: list[PlatformBuilt] = []
    entries: list[PlatformManifest] = []
    for platform in platforms:
        plan = plan_image(lock, repository, platform)
        outcome = builder.build(plan, no_cache=no_cache)
        pushed = None
        if push_to is not None:
            pushed, entry = builder.push_platform(plan, *push_to)
            entries.append(entry)
        record_image(
            project_dir, lock.lock_hash, outcome.image_id, outcome.reference, outcome.base_diff_id,
            pushed=pushed, platform=platform,
        )  # fmt: skip
        evidence.image_built(project_dir, plan, outcome.image_id, pushed)
        done.append(PlatformBuilt(platform, outcome, pushed))
    if push_to is None or len(entries) < 2:
        return done, None
    registry, target = push_to
    host, namespace = split_target(target)
    path = f"{namespace}/{repository}" if namespace else repository
    index = f"{host}/{push_index(registry, path, f'{lock.short_hash}-index', entries)}"
    record_index(project_dir, lock.lock_hash, index)
    return done, index
