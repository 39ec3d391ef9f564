"""What `envlock gc` must keep for a set of projects: their locks and every run's image and lock."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from envlock.errors import SpecError
from envlock.image.gc import Needed, needed_of
from envlock.run.records import RunStore


def needed_by(projects: Sequence[Path]) -> tuple[Needed, list[Path]]:
    """The locks and run images of these projects, and the run records that could not be read (kept out)."""
    texts: list[str] = []
    image_ids: set[str] = set()
    broken: list[Path] = []
    for project in projects:
        if not project.is_dir():
            raise SpecError(f"no project directory {project}", hint="pass each project with -C DIR")
        lock = project / "envlock.lock"
        if lock.is_file():
            texts.append(lock.read_text(encoding="utf-8"))
        store = RunStore(project)
        records, damaged = store.scan()
        broken += damaged
        for record in records:
            image_ids.add(record.image_id)
            copy = store.directory(record.run_id) / "envlock.lock"
            if copy.is_file():
                texts.append(copy.read_text(encoding="utf-8"))
    return needed_of(texts, image_ids), broken
