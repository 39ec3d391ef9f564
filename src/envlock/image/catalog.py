"""The project's own memory of its images: `.envlock/images.json`, lock hash → image ID and pushed digests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from envlock.fsutil import atomic_write_text, read_json
from envlock.paths import ProjectLayout


def read_images(project_dir: Path) -> dict[str, Any]:
    """The project's .envlock/images.json: lock hash → image ID, reference, base, pushed digests."""
    path = ProjectLayout(project_dir).images
    known = read_json(path)
    return dict(known) if isinstance(known, dict) else {}


def record_image(
    project_dir: Path, lock_hash: str, image_id: str, reference: str, base: str, *, pushed: str | None = None
) -> Path:
    """Remember, in the project's .envlock/images.json, which image (and registry digest) a lock gave."""
    path = ProjectLayout(project_dir).images
    known = read_images(project_dir)
    entry = known.setdefault(lock_hash, {})
    entry.update({"image-id": image_id, "reference": reference, "base": base})
    if pushed and pushed not in entry.setdefault("pushed", []):
        entry["pushed"].append(pushed)
    atomic_write_text(path, json.dumps(known, indent=2, sort_keys=True) + "\n")
    return path
