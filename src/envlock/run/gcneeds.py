"""What `envlock gc` must keep for a set of projects: their locks, every run's image, lock and own metadata, and the
build-backend entries their packages use."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from envlock.errors import EnvlockError, SpecError
from envlock.image.catalog import read_images
from envlock.image.gc import Needed, needed_of
from envlock.image.roots import Root, read_roots, remove_root
from envlock.lock import lockfile
from envlock.lock.backend import entries_used
from envlock.lock.localpackages import LocalPackage
from envlock.lock.spec import load_spec
from envlock.paths import LOCK_FILE, CacheLayout, ProjectLayout
from envlock.run.ownversion import metadata_key
from envlock.run.records import RunStore


def needed_by(projects: Sequence[Path]) -> tuple[Needed, list[Path]]:
    """The locks and run images of these projects, the own metadata their runs mount and the build-backend entries
    their packages use, and the run records that could not be read (kept out)."""
    texts: list[str] = []
    image_ids: set[str] = set()
    broken: list[Path] = []
    repositories: set[str] = set()
    backend_entries: set[str] = set()
    own: list[tuple[Path, frozenset[str] | None]] = []
    for project in projects:
        if not project.is_dir():
            raise SpecError(f"no project directory {project}", hint="pass each project with -C DIR")
        # A broken pyproject.toml: the names its images were given are in images.json (read below).
        with contextlib.suppress(EnvlockError):
            spec = load_spec(project)
            repositories.add(spec.name)
            backend_entries |= _backend_entries(project, spec.local_packages)
        repositories |= {str(e.get("reference", "")).rpartition(":")[0] for e in read_images(project).values()}
        lock = ProjectLayout(project).lock
        if lock.is_file():
            texts.append(lockfile.read_text(lock))
        store = RunStore(project)
        records, damaged = store.scan()
        broken += damaged
        names: set[str] = set()
        for record in records:
            image_ids.add(record.image_id)
            repositories.add(record.image_reference.rpartition(":")[0])
            copy = store.directory(record.run_id) / LOCK_FILE
            if copy.is_file():
                text = lockfile.read_text(copy)
                texts.append(text)
                names |= _own_metadata(text, record.package_versions)
        own.append((project, None if damaged else frozenset(names)))
    needed = needed_of(texts, image_ids, repositories - {""})
    return replace(needed, backend_entries=frozenset(backend_entries), own_metadata=tuple(own)), broken


def _backend_entries(project: Path, packages: Sequence[LocalPackage]) -> set[str]:
    """The build-backend cache entries the project's packages that a backend describes use now."""
    found: set[str] = set()
    for package in packages:
        if package.backend:
            with contextlib.suppress(EnvlockError, OSError):
                found |= entries_used(project / package.directory)
    return found


def _own_metadata(lock_text: str, versions: Mapping[str, str]) -> set[str]:
    """The own-metadata folder a run mounted (none when its lock copy or versions cannot make one)."""
    try:
        key = metadata_key(lockfile.loads(lock_text), versions)
    except Exception:  # noqa: BLE001  (any damage, as needed_of: that copy keeps nothing)
        return set()
    return {key} if key else set()


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
