"""Seeding a new image's bytecode folder from other images' folders, for the sources both images hold byte for byte.

A timestamp pyc is valid for a source of the same path, mtime and size; in two images, a source with those three
the same may still hold other bytes (every file of an envlock layer carries the layer's fixed mtime), which is why
each image has a folder of its own. What makes a source the same bytes is its layer: layers with the same diff_id
are the same tar, so a path whose topmost provider is the same layer in both images, with nothing above it in
either image hiding it (another file, a whiteout, an opaque folder), is the same file, and the other image's pyc
for it is this image's too, when the interpreter is the same (the same base layers). Such pycs are hard-linked
(copied where a link cannot be made: another user's file, another file system) before the image's background
compile starts, which then finds them up to date and compiles the rest: one changed package leaves only its own
files to compile. Python replaces a pyc by rename, never in place, so a linked pyc never changes under the other
folder. What each layer holds is listed once from its tar in envlock's cache and kept under LISTINGS_DIR; a layer
with no tar there hides whatever lies below it (nothing under it is seeded). Only this user's folders, pycs and
listings are taken: in a cache shared by a group, another user's pyc is another user's code.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from envlock.fsutil import atomic_write_text, make_dirs, read_json

# In each bytecode folder: the image's layers and its base's, written when the folder is first seeded.
STACK_FILE = ".stack.json"
# Under the bytecode root: one `<diff_id hex>.json` per layer, what its tar holds (see Listing).
LISTINGS_DIR = ".listings"
# Folders seeded from, the most recently used first: the stack just before is the one that shares most.
MAX_SOURCES = 4
# Bumped when what a listing says changes for the same tar.
LISTING_FORMAT = 1
_DIFF_ID = re.compile(r"sha256:[0-9a-f]{64}")
_FOLDER = re.compile(r"[0-9a-f]{64}")
# `<stem>.<cache tag>[.opt-N].pyc`, as PYTHONPYCACHEPREFIX lays them out beside the source's folder path.
_PYC = re.compile(r"(?P<stem>[^/]+)\.[a-z]+-\d+[a-z]*(\.opt-\d+)?\.pyc")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# One layer's entries: (path without a leading `/`, kind), kind one of: f a regular file, d a folder, o anything else
# (a link, a device), w a whiteout of the path (`.wh.NAME`), q an opaque folder (`.wh..wh..opq` in it).
Listing = tuple[tuple[str, str], ...]
LayerTars = Callable[[str], Path | None]


@dataclass(frozen=True)
class ImageStack:
    """An image's layers bottom up (its config's diff_ids) and its base's (`dev.envlock.base`): the interpreter."""

    diff_ids: tuple[str, ...]
    base: tuple[str, ...]

    def as_json(self) -> str:
        """The folder's STACK_FILE."""
        return json.dumps({"diff_ids": list(self.diff_ids), "base": list(self.base)}, sort_keys=True)

    @staticmethod
    def parse(data: object) -> ImageStack | None:
        """A STACK_FILE's content, None unless every entry is a diff_id and the base is the bottom of the stack."""
        if not isinstance(data, dict):
            return None
        diff_ids, base = data.get("diff_ids"), data.get("base")
        if not (isinstance(diff_ids, list) and isinstance(base, list)):
            return None
        if not all(isinstance(d, str) and _DIFF_ID.fullmatch(d) for d in [*diff_ids, *base]):
            return None
        stack = ImageStack(tuple(diff_ids), tuple(base))
        return stack if stack.base and stack.diff_ids[: len(stack.base)] == stack.base else None


@dataclass(frozen=True)
class Seeded:
    """What seeding a folder did: pycs linked (or copied), from how many folders, in how long."""

    files: int
    sources: int
    seconds: float


def list_layer(tar: Path) -> Listing:
    """Every entry of a layer tar, by envlock's kinds (a whiteout names the path it removes)."""
    entries: list[tuple[str, str]] = []
    with tarfile.open(tar, "r:*") as archive:
        for member in archive:
            path = _clean(member.name)
            if path is None:
                continue
            folder, _, name = path.rpartition("/")
            if name == ".wh..wh..opq":
                entries.append((folder, "q"))
            elif name.startswith(".wh."):
                entries.append((f"{folder}/{name[4:]}" if folder else name[4:], "w"))
            else:
                kind = "f" if member.isreg() else "d" if member.isdir() else "o"
                entries.append((path, kind))
    return tuple(entries)


def _clean(name: str) -> str | None:
    """A member's path without `./`, leading or trailing `/`; None for one that climbs out or names the root."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


class Listings:
    """Layer listings by diff_id: from LISTINGS_DIR, else listed from the layer's tar (and kept there)."""

    def __init__(self, root: Path, tars: LayerTars) -> None:
        self.directory = root / LISTINGS_DIR
        self.tars = tars
        self._known: dict[str, Listing | None] = {}

    def get(self, diff_id: str) -> Listing | None:
        """What the layer holds; None when neither a listing nor its tar is at hand."""
        if diff_id not in self._known:
            self._known[diff_id] = self._read(diff_id)
        return self._known[diff_id]

    def _read(self, diff_id: str) -> Listing | None:
        path = self.directory / f"{diff_id.removeprefix('sha256:')}.json"
        kept = _kept_listing(path, diff_id)
        if kept is not None:
            return kept
        try:
            tar = self.tars(diff_id)
            listing = list_layer(tar) if tar is not None else None
        except (OSError, tarfile.TarError):  # not ours to read, damaged, or gone meanwhile: not known
            return None
        if listing is None:
            return None
        with contextlib.suppress(OSError):  # a cache this user may not write: listed again next time
            make_dirs(self.directory)
            data = {"format": LISTING_FORMAT, "diff_id": diff_id, "entries": [list(entry) for entry in listing]}
            atomic_write_text(path, json.dumps(data, separators=(",", ":")))
        return listing


def _kept_listing(path: Path, diff_id: str) -> Listing | None:
    """A listing this user wrote (another user's, in a shared cache, could name a file that is not in the layer)."""
    try:
        mine = path.lstat().st_uid == os.getuid() and not path.is_symlink()
    except OSError:
        return None
    data = read_json(path) if mine else None
    if not (isinstance(data, dict) and data.get("format") == LISTING_FORMAT and data.get("diff_id") == diff_id):
        return None
    entries = data.get("entries")
    listing: list[tuple[str, str]] = []
    for entry in entries if isinstance(entries, list) else [None]:
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry)):
            return None
        if entry[1] not in ("f", "d", "o", "w", "q") or _clean(entry[0]) != entry[0]:
            return None
        listing.append((entry[0], entry[1]))
    return tuple(listing)


def sources(stack: tuple[str, ...], listing: Callable[[str], Listing | None]) -> dict[str, str]:
    """Each `.py` file the image shows, by path, mapped to the layer it comes from, where that is known for sure: the
    topmost entry at the path is a regular file of that layer, and no layer above it hides it. A layer whose listing
    is unknown ends the walk down: it may hide anything below it."""
    found: dict[str, str] = {}
    decided: set[str] = set()  # paths a layer above has an entry at
    hidden: set[str] = set()  # paths hidden, with all below them, from the layers further down
    for diff_id in reversed(stack):
        entries = listing(diff_id)
        if entries is None:
            break
        hides: list[str] = []
        for path, kind in entries:
            if _hidden(path, hidden):
                continue
            if kind in ("w", "q"):
                hides.append(path)
                continue
            if path in decided:
                continue
            decided.add(path)
            if kind == "f" and path.endswith(".py"):
                found[path] = diff_id
            if kind != "d":
                hides.append(path)  # a file or link there replaces whatever folder lies below
        hidden.update(hides)  # after the layer: its own entries are not hidden by its own whiteouts
    return found


def _hidden(path: str, hidden: set[str]) -> bool:
    """The path or one of its folders is hidden."""
    while True:
        if path in hidden:
            return True
        cut = path.rfind("/")
        if cut < 0:
            return False
        path = path[:cut]


def read_stack(folder: Path) -> ImageStack | None:
    """A folder's STACK_FILE, None when missing, damaged or a link."""
    path = folder / STACK_FILE
    return None if path.is_symlink() else ImageStack.parse(read_json(path))


def seed(root: Path, folder: Path, stack: ImageStack, tars: LayerTars) -> Seeded:
    """Link into `folder` (an image's bytecode folder under `root`) the pycs other folders hold for sources that
    are the same file in both images (see the module's docstring), and write its STACK_FILE. Folders this user may
    not read, links and whatever does not parse are skipped; a failure never stops the caller's compile."""
    start = time.perf_counter()
    listings = Listings(root, tars)
    candidates = _candidates(root, folder, stack)
    # Listed even with nothing to seed from: the next image's seed then finds this one's layers listed already.
    mine = sources(stack.diff_ids, listings.get)
    files = used = 0
    for other, theirs in candidates:
        same = {path for path, layer in sources(theirs.diff_ids, listings.get).items() if mine.get(path) == layer}
        if not same:
            continue
        try:
            linked = _link_all(other, folder, same)
        except OSError:
            continue
        files += linked
        used += linked > 0
    with contextlib.suppress(OSError):
        atomic_write_text(folder / STACK_FILE, stack.as_json())
    return Seeded(files, used, time.perf_counter() - start)


def _candidates(root: Path, folder: Path, stack: ImageStack) -> list[tuple[Path, ImageStack]]:
    """Other images' folders with the same base, the most recently used first, at most MAX_SOURCES."""
    found: list[tuple[float, Path, ImageStack]] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    for entry in entries:
        if entry.name == folder.name or not _FOLDER.fullmatch(entry.name):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if info.st_uid != os.getuid():
            continue  # another user's, in a shared cache: bytecode is code, taken from no one else
        mtime = info.st_mtime
        theirs = read_stack(Path(entry.path))
        if theirs is not None and theirs.base == stack.base:
            found.append((mtime, Path(entry.path), theirs))
    found.sort(key=lambda item: -item[0])
    return [(path, theirs) for _, path, theirs in found[:MAX_SOURCES]]


def _link_all(source: Path, target: Path, same: set[str]) -> int:
    """Link the pycs under `source` whose source file is in `same` into the same place under `target`."""
    folders = {""}
    for path in same:
        parts = path.split("/")[:-1]
        folders.update("/".join(parts[:end]) for end in range(1, len(parts) + 1))
    source_fd = os.open(source, _DIR_FLAGS)
    try:
        target_fd = os.open(target, _DIR_FLAGS)
    except OSError:
        os.close(source_fd)
        raise
    try:
        return _link_folder(source_fd, target_fd, "", folders, same)
    finally:
        os.close(source_fd)
        os.close(target_fd)


def _link_folder(source_fd: int, target_fd: int, relative: str, folders: set[str], same: set[str]) -> int:
    """One folder of the walk: its pycs for sources in `same`, then the subfolders that hold such sources."""
    try:
        with os.scandir(source_fd) as scan:
            entries = list(scan)
    except OSError:
        return 0  # another user's folder, or gone meanwhile
    linked = 0
    for entry in entries:
        path = f"{relative}/{entry.name}" if relative else entry.name
        if entry.is_dir(follow_symlinks=False):
            if path in folders:
                linked += _descend(source_fd, target_fd, entry.name, path, folders, same)
            continue
        match = _PYC.fullmatch(entry.name)
        if match and relative and f"{relative}/{match['stem']}.py" in same and _own_file(entry):
            linked += _link_one(source_fd, target_fd, entry.name)
    return linked


def _own_file(entry: os.DirEntry[str]) -> bool:
    """A regular file (not a link) of this user's."""
    try:
        return entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.getuid()
    except OSError:
        return False


def _descend(source_fd: int, target_fd: int, name: str, path: str, folders: set[str], same: set[str]) -> int:
    try:
        child = os.open(name, _DIR_FLAGS, dir_fd=source_fd)
    except OSError:
        return 0
    try:
        with _folder_in(target_fd, name) as target_child:
            if target_child is None:
                return 0
            return _link_folder(child, target_child, path, folders, same)
    finally:
        os.close(child)


@contextlib.contextmanager
def _folder_in(parent_fd: int, name: str) -> Iterator[int | None]:
    """A descriptor of the folder `name` in the parent (made when missing), never reached through a link; None
    when it cannot be had (a link or a file is there, or the folder is not ours to write)."""
    with contextlib.suppress(FileExistsError, OSError):
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def _link_one(source_fd: int, target_fd: int, name: str) -> int:
    """Hard-link one pyc (a copy, published by rename, where a link cannot be made); 0 when one is there."""
    try:
        os.link(name, name, src_dir_fd=source_fd, dst_dir_fd=target_fd, follow_symlinks=False)
    except FileExistsError:
        return 0
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
            return 0
        return _copy_one(source_fd, target_fd, name)
    return 1


def _copy_one(source_fd: int, target_fd: int, name: str) -> int:
    temporary = f".{name}.{os.getpid()}.seeding"
    try:
        reading = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=source_fd)
    except OSError:
        return 0
    try:
        with os.fdopen(reading, "rb") as source:
            if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                return 0
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(temporary, flags, 0o644, dir_fd=target_fd), "wb") as copy:
                shutil.copyfileobj(source, copy)
        os.rename(temporary, name, src_dir_fd=target_fd, dst_dir_fd=target_fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=target_fd)
        return 0
    return 1
