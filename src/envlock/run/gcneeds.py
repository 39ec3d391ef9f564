"""What `envlock gc` must keep for a set of projects: their locks and every run's image and lock."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from envlock.errors import EnvlockError, SpecError
from envlock.image.catalog import read_images
from envlock.image.gc import Needed, needed_of
from envlock.image.roots import Root, read_roots, remove_root
from envlock.lock.spec import load_spec
from envlock.paths import LOCK_FILE, CacheLayout, ProjectLayout
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
        lock = ProjectLayout(project).lock
        if lock.is_file():
            texts.append(lock.read_text(encoding="utf-8"))
        store = RunStore(project)
        records, damaged = store.scan()
        broken += damaged
        for record in records:
            image_ids.add(record.image_id)
            repositories.add(record.image_reference.rpartition(":")[0])
            copy = store.directory(record.run_id) / LOCK_FILE
            if copy.is_file():
                texts.append(copy.read_text(encoding="utf-8"))
    return needed_of(texts, image_ids, repositories - {""}), broken


@dataclass(frozen=True)
class Kept:
    """What gc keeps for the projects named and every live root of the cache, and what it found about the roots."""

    needed: Needed
    broken: list[Path]
    live: int
    dead: list[Root] = field(default_factory=list)
    unreadable: list[Root] = field(default_factory=list)


def needed_by_roots(projects: Sequence[Path], cache: CacheLayout, *, dry_run: bool = False) -> Kept:
    """What the named projects and every live root registered in the cache need. A dead root (its folder is gone)
    is forgotten (unless `dry_run`) and its images become candidates; a live root this user cannot read keeps the
    whole cache (and its images)."""
    roots = read_roots(cache)
    named = {p.resolve() for p in projects}
    dead = [r for r in roots if not r.live and r.project not in named]
    unreadable = [r for r in roots if r.live and r.project not in named and not r.readable]
    readable = [r.project for r in roots if r.live and r.readable and r.project not in named]
    needed, broken = needed_by([*projects, *readable])
    gone = {name for r in dead for name in r.repositories}
    hidden = {name for r in unreadable for name in r.repositories}
    needed = replace(
        needed, repositories=(needed.repositories | gone) - hidden, keep_cache=needed.keep_cache or bool(unreadable)
    )
    if not dry_run:
        for root in dead:
            remove_root(root)
    return Kept(needed, broken, len(named) + len(readable), dead, unreadable)
