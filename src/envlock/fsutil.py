"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from envlock.errors import BuildError, BundleError


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write data to path through a temp file in the same directory, fsync, then rename over."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.chmod(mode)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Write text (UTF-8) atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), mode)


# Writing files that came from elsewhere (a bundle's run folder, inputs, saved untracked files) into a folder built
# from it: each component is opened with O_NOFOLLOW relative to its parent's descriptor, so no symbolic link, put
# there by a commit or a patch, leads a write out of the folder. The refusal is a BundleError (exit 31): only
# foreign or edited data puts a link where envlock writes.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _parts(relative: str) -> list[str]:
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if not parts or relative.startswith("/") or ".." in parts:
        raise BundleError(f"refused to write {relative!r}: not a plain relative path")
    return parts


def _refused(root: Path, relative: str, component: str) -> BundleError:
    return BundleError(
        f"refused to write {relative} in {root}: {component} is a symbolic link or not a folder",
        hint="what came from elsewhere would write outside its folder; envlock never follows a link there",
    )


def _open_dir(root: Path, relative: str, parts: list[str]) -> int:
    """A descriptor of root/parts…, each folder made when missing, none of them reached through a link."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    walked: list[str] = []
    try:
        for part in parts:
            walked.append(part)
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _refused(root, relative, "/".join(walked)) from exc
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_dirs_confined(root: Path, relative: str) -> Path:
    """root/relative made as folders (like mkdir -p) without following any symbolic link; returns the path."""
    os.close(_open_dir(root, relative, _parts(relative)))
    return root / relative


@contextlib.contextmanager
def open_confined(root: Path, relative: str, mode: int = 0o644) -> Iterator[BinaryIO]:
    """root/relative opened for writing (made or truncated), no component of it a symbolic link (BundleError)."""
    *folders, name = _parts(relative)
    parent = _open_dir(root, relative, folders)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENOTDIR):
            raise _refused(root, relative, relative) from exc
        raise
    finally:
        os.close(parent)
    with os.fdopen(fd, "wb") as handle:
        yield handle


def write_confined(root: Path, relative: str, data: bytes) -> None:
    """Write bytes to root/relative without following any symbolic link (BundleError on one)."""
    with open_confined(root, relative) as handle:
        handle.write(data)


def copy_confined(source: Path, root: Path, relative: str) -> None:
    """Copy a file, or a folder's files and folders, to root/relative without following a link on either side (a
    link in `source` is refused too: what is copied is plain files)."""
    if source.is_symlink() or not (source.is_file() or source.is_dir()):
        raise BundleError(f"refused to copy {source}: not a plain file or folder")
    if source.is_file():
        with source.open("rb") as reading, open_confined(root, relative) as writing:
            shutil.copyfileobj(reading, writing, 1 << 20)
        return
    make_dirs_confined(root, relative)
    for entry in sorted(source.iterdir()):
        copy_confined(entry, root, f"{relative}/{entry.name}")


def resolves_inside(root: Path, relative: str) -> bool:
    """True when root/relative, every link on the way followed, is root or stays under it."""
    base = root.resolve()
    return (base / relative).resolve().is_relative_to(base)


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def owned_prefix(prefix: str) -> str:
    """A scratch name prefix that names its owner (pid and host), so a sweep can tell a dead owner's litter."""
    return f"{prefix}{os.getpid()}-{_host_tag()}-"


def _owner_gone(name: str, prefix: str) -> bool:
    """True when the scratch entry names a process of this host that no longer exists."""
    match = re.fullmatch(rf"{re.escape(prefix)}(\d+)-([0-9a-f]{{8}})-.*", name, flags=re.DOTALL)
    if match is None or match.group(2) != _host_tag():
        return False  # not ours to judge (an old name, or another machine sharing the cache): age decides
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def sweep_stale(root: Path, prefix: str, max_age: float = 86400.0) -> list[Path]:
    """Remove scratch entries named prefix* under root left by a killed process: its owner is gone, or it is old."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    cutoff = time.time() - max_age
    for entry in root.glob(f"{prefix}*"):
        with contextlib.suppress(OSError):
            if _owner_gone(entry.name, prefix) or entry.lstat().st_mtime < cutoff:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
    return removed


@contextlib.contextmanager
def exclusive(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive flock on path (made if missing) for the block, across threads and processes; `on_wait` is
    called first when another holder makes this one wait. The file itself stays (removing it would race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def tree_size(root: Path) -> int:
    """Bytes of the regular files under root (links not followed)."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size  # noqa: PTH118
    return total


def remove_tree(root: Path) -> None:
    """Remove a directory tree so that no reader ever sees part of it: renamed to a dot-name beside it first (a
    name readers skip), then removed, read-only folders (an unpacked image's) included."""
    doomed = root.with_name(f".{root.name}.removing-{os.getpid()}")
    root.rename(doomed)

    def writable(function: Any, path: str, _exc: Any) -> None:
        parent = os.path.dirname(path)  # noqa: PTH120
        os.chmod(parent, 0o700)  # noqa: PTH101
        if os.path.isdir(path) and not os.path.islink(path):  # noqa: PTH112, PTH114
            os.chmod(path, 0o700)  # noqa: PTH101
        function(path)

    shutil.rmtree(doomed, onerror=writable)


@contextlib.contextmanager
def no_space_is_an_error(action: str, places: Iterable[Path]) -> Iterator[None]:
    """A full disk while `action` becomes one BuildError naming the path and each place's free space."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = []
        for place in dict.fromkeys(places):
            with contextlib.suppress(OSError):
                free.append(f"{place}: {shutil.disk_usage(_existing(place)).free // (1 << 20)} MiB free")
        where = f" writing {exc.filename}" if exc.filename else ""
        raise BuildError(
            f"disk full while {action}{where}",
            hint="free some space, or point TMPDIR / ENVLOCK_CACHE_DIR at a larger disk (" + "; ".join(free) + ")",
        ) from exc


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def read_json(path: Path) -> Any:
    """A JSON file of envlock's own state, or None when it is missing or damaged (then it is simply remade)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes (hex), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
