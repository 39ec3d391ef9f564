"""`envlock gc`: remove the images, layers, bases, wheels and metadata that no lock or run record still needs.

What restore and reproduce need is kept: each run's image and its lock's wheels and layers, and the current lock's.
Folders kept per image ID (the bytecode runs write, Charliecloud's unpacked images) go with their image: kept while
the engine keeps it or a run record names it. A project's own metadata (the dist-infos runs mount for packages
versioned by VCS) is kept while one of its run records names it; the build backends' cache (their metadata and
venvs) while a live project's package uses the entry as the package's files are now.
Two collections never run at once (an fcntl lock on <cache>/gc.lock), and any cache entry touched in the last
`grace` seconds is left alone, so a build running beside gc keeps what it is making.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from envlock.engine.bytecode import LISTINGS_DIR
from envlock.engine.docker import ImageInfo, ImageLister
from envlock.engine.runtimes import LOCK_HASH_LABEL
from envlock.errors import CacheBusyError
from envlock.fsutil import exclusive, is_disk_full, read_json, remove_tree, tree_size
from envlock.image.plan import layer_key, plan_image
from envlock.image.staging import VenvLayout
from envlock.lock import lockfile
from envlock.lock.backend import ENVS_DIR, cache_entries
from envlock.lock.lockfile import Lock
from envlock.paths import CacheLayout, ProjectLayout
from envlock.report import Report, silent

GRACE_SECONDS = 15 * 60
Drop = Callable[[str, str, list[Path]], None]
# Where an upstream base keeps its Python: the venv layer's key depends on it.
PYTHON_HOMES = ("/usr/bin", "/usr/local/bin")


@dataclass(frozen=True)
class Needed:
    """What must survive: locks (with their exact text, which keys the lock layer) and image IDs of runs.

    Only images of `repositories` (the projects' image names) are candidates: an engine shared with other
    projects keeps their images, whatever this collection is told about its own.
    """

    locks: tuple[tuple[Lock, str], ...] = ()
    image_ids: frozenset[str] = frozenset()
    repositories: frozenset[str] = frozenset()
    # A live root this user cannot read: what it needs is unknown, so no cache entry is removed (images of the
    # repositories named above still are).
    keep_cache: bool = False
    # The build-backend cache entries the projects' own packages use as their files are now (lock.backend).
    backend_entries: frozenset[str] = frozenset()
    # Per project: the own-metadata folders (ProjectLayout.local_metadata) its run records name; None where a
    # damaged record may name any (then all are kept).
    own_metadata: tuple[tuple[Path, frozenset[str] | None], ...] = ()


@dataclass
class Removal:
    """One thing gc removes (or, with --dry-run, would remove)."""

    kind: str  # image | layer | base | wheel | bytecode | charliecloud | own-metadata | backend-metadata | backend-env
    name: str
    size: int


@dataclass
class GcReport:
    """Everything removed, and the bytes freed."""

    removed: list[Removal] = field(default_factory=list)
    kept_recent: int = 0
    failed: list[Removal] = field(default_factory=list)  # entries this user could not remove (another's files)

    @property
    def freed(self) -> int:
        """Bytes freed on disk and in the engine."""
        return sum(r.size for r in self.removed)


def needed_of(lock_texts: list[str], image_ids: set[str], repositories: set[str]) -> Needed:
    """Needed from lock files' text (a damaged one is skipped: it cannot be rebuilt from anyway)."""
    locks = []
    for text in lock_texts:
        try:
            locks.append((lockfile.loads(text), text))
        except Exception:  # noqa: BLE001, S112  (any damage: that lock keeps nothing)
            continue
    return Needed(tuple(locks), frozenset(image_ids), frozenset(repositories))


@contextmanager
def _exclusive(cache: CacheLayout) -> Iterator[None]:
    def busy() -> None:
        raise CacheBusyError(f"another `envlock gc` is collecting {cache.root}") from None

    with exclusive(cache.root / "gc.lock", on_wait=busy):
        yield


def _keys(lock: Lock) -> set[str]:
    keys = set()
    for target in lock.targets:
        try:
            plan = plan_image(lock, "gc", target.platform)
        except Exception:  # noqa: BLE001, S112  (a platform with no wheel for this host: nothing to keep)
            continue
        for home in PYTHON_HOMES:
            keys |= {layer_key(spec, VenvLayout(lock.python, home)) for spec in plan.layers}
    return keys


def collect_garbage(
    needed: Needed,
    engine: ImageLister,
    cache: CacheLayout,
    *,
    dry_run: bool = False,
    grace: float = GRACE_SECONDS,
    now: float | None = None,
    report: Report = silent,
) -> GcReport:
    """Remove what `needed` does not need from the engine and the cache; report what went and the bytes freed."""
    result = GcReport()
    moment = time.time() if now is None else now
    lock_hashes = {lock.lock_hash for lock, _ in needed.locks}
    wheels = {f.sha256 for lock, _ in needed.locks for t in lock.targets for p in t.packages for f in p.files}
    keys = set().union(*(_keys(lock) for lock, _text in needed.locks)) if needed.locks else set()
    bases = {t.base.id for lock, _ in needed.locks for t in lock.targets if t.base is not None}

    def recent(path: Path) -> bool:
        try:
            fresh = moment - path.stat().st_mtime < grace
        except FileNotFoundError:
            return True
        result.kept_recent += fresh
        return fresh

    def drop(kind: str, name: str, paths: list[Path]) -> None:
        """Remove files, and folders as a whole (renamed away first: see fsutil.remove_tree). An entry this user
        cannot remove (a shared cache holding another user's files) is reported and left; gc goes on."""
        try:
            size = sum(tree_size(p) if p.is_dir() else p.stat().st_size for p in paths if p.exists())
            report(f"{'would remove' if dry_run else 'removing'} {kind} {name} ({size} bytes)")
            if not dry_run:
                for path in paths:
                    if path.is_dir():
                        remove_tree(path)
                    else:
                        path.unlink(missing_ok=True)
        except OSError as exc:
            if is_disk_full(exc):
                raise
            result.failed.append(Removal(kind, name, 0))
            where = exc.filename or (paths[0] if paths else name)
            report(f"warning: cannot remove {kind} {name}: {exc.strerror or exc} ({where}); left for its owner")
            return
        result.removed.append(Removal(kind, name, size))

    with _exclusive(cache):
        kept_images = _images(engine, needed, lock_hashes, result, dry_run=dry_run, report=report)
        for project, names in needed.own_metadata:  # the projects' own state: whatever the cache's roots say
            _own_metadata(project, names, recent, drop)
        if needed.keep_cache:
            return result
        diff_ids = {d for image in kept_images for d in image.diff_ids} | bases
        _layers(cache.layers, keys, diff_ids, recent, drop)
        _bases(cache.bases, diff_ids, recent, drop)
        _wheels(cache.wheels / "sha256", wheels, recent, drop)
        images = {image.image_id for image in kept_images} | needed.image_ids
        for kind, root in (("bytecode", cache.bytecode), ("charliecloud", cache.charliecloud)):
            _image_folders(root, kind, images, recent, drop)
        _listings(cache.bytecode / LISTINGS_DIR, diff_ids, recent, drop)
        _build_backends(cache.build_backends, needed.backend_entries, recent, drop)
    return result


def _image_needed(image: ImageInfo, image_ids: frozenset[str], lock_hashes: set[str]) -> bool:
    return image.image_id in image_ids or image.labels.get(LOCK_HASH_LABEL) in lock_hashes


def _images(
    engine: ImageLister, needed: Needed, lock_hashes: set[str], result: GcReport, *, dry_run: bool, report: Report
) -> list[ImageInfo]:
    """Remove the projects' images no lock or run needs (others' images are never candidates); returns the kept."""
    images = engine.envlock_images()
    mine = [i for i in images if any(t.rpartition(":")[0] in needed.repositories for t in i.tags)]
    kept_images = [i for i in images if i not in mine or _image_needed(i, needed.image_ids, lock_hashes)]
    for image in images:
        if image in kept_images:
            continue
        names = ", ".join(image.tags) or image.image_id[:19]
        result.removed.append(Removal("image", names, image.size))
        report(f"{'would remove' if dry_run else 'removing'} image {names} ({image.size} bytes)")
        if not dry_run:
            engine.remove(image.image_id)
    return kept_images


def _bases(root: Path, diff_ids: set[str], recent: Callable[[Path], bool], drop: Drop) -> None:
    """Exported recipe bases (tar and metadata), kept while an image or a lock uses their layer."""
    for meta in sorted(root.glob("*.json")) if root.is_dir() else []:
        data = read_json(meta)
        diff_id = data.get("diff-id") if isinstance(data, dict) else None
        tar = meta.with_suffix(".tar")
        if diff_id in diff_ids or recent(meta) or recent(tar):
            continue
        drop("base", meta.stem, [tar, meta])


def _wheels(store: Path, wheels: set[str], recent: Callable[[Path], bool], drop: Drop) -> None:
    """Cached wheels by sha256, kept while a lock names them."""
    for path in sorted(store.glob("*/*")) if store.is_dir() else []:
        if path.name in wheels or recent(path):
            continue
        drop("wheel", path.name[:12], [path])


def _layers(root: Path, keys: set[str], diff_ids: set[str], recent: Callable[[Path], bool], drop: Drop) -> None:
    """Finished layers by content key, and upstream bases' exports (kept while any of their layers is)."""
    if not root.is_dir():
        return
    for meta in sorted(root.glob("*.json")):
        data = read_json(meta)
        tar = meta.with_suffix(".tar")
        if meta.name.startswith("upstream-"):
            wanted = isinstance(data, dict) and bool(set(data.get("diff-ids", [])) & diff_ids)
            if not wanted and not recent(meta):
                drop("layer", meta.stem, [meta])
            continue
        diff_id = data.get("diff_id") if isinstance(data, dict) else None
        if meta.stem in keys or diff_id in diff_ids or recent(meta) or recent(tar):
            continue
        drop("layer", meta.stem[:12], [tar, meta])


def _image_folders(root: Path, kind: str, image_ids: set[str], recent: Callable[[Path], bool], drop: Drop) -> None:
    """Folders named by image ID, kept while their image is; one in use is recent (every start touches it). A
    dot-name is one being made or removed."""
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir() or folder.is_symlink():
            continue
        if folder.name.startswith("."):
            if _abandoned_removal(folder):  # a removal that failed part-way (another user's files), or was killed
                drop(kind, folder.name, [folder])
            continue
        if f"sha256:{folder.name}" in image_ids or recent(folder):
            continue
        drop(kind, folder.name[:12], [folder])


def _listings(root: Path, diff_ids: set[str], recent: Callable[[Path], bool], drop: Drop) -> None:
    """What each layer holds (engine.bytecode, for seeding bytecode folders), kept while an image uses the layer."""
    for path in sorted(root.glob("*.json")) if root.is_dir() else []:
        if f"sha256:{path.stem}" in diff_ids or recent(path):
            continue
        drop("bytecode", f"listing {path.stem[:12]}", [path])


def _abandoned_removal(folder: Path) -> bool:
    """A folder fsutil.remove_tree renamed away (`.NAME.removing-PID`) whose remover is gone: nobody reads it, and
    nobody else will remove it."""
    head, _, pid = folder.name.rpartition(".removing-")
    if not head or not pid.isdigit():
        return False
    if int(pid) == os.getpid():  # this process's own: its removals are over by the time gc looks again
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, another user's process
    return False


def _own_metadata(project: Path, names: frozenset[str] | None, recent: Callable[[Path], bool], drop: Drop) -> None:
    """A project's own-metadata folders (dist-infos a run mounts), kept while a run record names them. Only in a
    project folder of this user's, reached without a link (a `.envlock` or `local-metadata` that is a link leads
    out of the project: left alone), and never through a link inside it."""
    root = ProjectLayout(project).local_metadata
    try:
        inside = root.resolve() == project.resolve() / root.relative_to(project)
        if names is None or not inside or not root.is_dir() or root.stat().st_uid != os.getuid():
            return
    except OSError:
        return
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or folder.is_symlink() or not folder.is_dir():
            continue
        if folder.name in names or recent(folder):
            continue
        drop("own-metadata", folder.name[:12], [folder])


def _build_backends(root: Path, used: frozenset[str], recent: Callable[[Path], bool], drop: Drop) -> None:
    """The build backends' metadata and venvs: kept while a live project's package uses them as it is now (or
    they were used within the grace period); a kept metadata entry keeps the venv it was asked in."""
    entries = cache_entries(root)
    kept = {entry.name for entry in entries if entry.name in used or recent(entry.path)}
    kept |= {name for entry in entries if entry.name in kept for name in entry.uses}
    for entry in entries:
        if entry.name in kept:
            continue
        kind = "backend-env" if entry.name.startswith(f"{ENVS_DIR}/") else "backend-metadata"
        drop(kind, entry.path.name.removesuffix(".json")[:12], [entry.path])
