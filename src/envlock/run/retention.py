"""What `envlock gc` must keep for a set of projects: their locks and every run's image and lock."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from envlock.errors import EnvlockError, SpecError
from envlock.image.catalog import read_images
from envlock.image.gc import Needed, needed_of
from envlock.lock.spec import load_spec
from envlock.run.records import RunStore


def needed_by(projects: Sequence[Path]) -> tuple[Needed, list[Path]]:
    """The locks and run images of these projects, and the run records that could not be read (kept out)."""
    texts: list[str] = []
    image_ids: set[str] = set()
    broken: list[Path] = []
    repositories: set[str] = set()
    for project in projects:
        if not project.is_dir():
            raise SpecError(f"no project directory {project}", hint="pass each project with -C DIR")
        # A broken pyproject.toml: the names its images were given are in images.json (read below).
        with contextlib.suppress(EnvlockError):
            repositories.add(load_spec(project).name)
        repositories |= {str(e.get("reference", "")).rpartition(":")[0] for e in read_images(project).values()}
        lock = project / "envlock.lock"
        if lock.is_file():
            texts.append(lock.read_text(encoding="utf-8"))
        store = RunStore(project)
        records, damaged = store.scan()
        broken += damaged
        for record in records:
            image_ids.add(record.image_id)
            repositories.add(record.image_reference.rpartition(":")[0])
            copy = store.directory(record.run_id) / "envlock.lock"
            if copy.is_file():
                texts.append(copy.read_text(encoding="utf-8"))
    return needed_of(texts, image_ids, repositories - {""}), broken
