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
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from envlock.errors import BundleError, CacheNotWritableError, DiskFullError, EnvlockError, FileAccessError


def make_dirs(path: Path) -> None:
    """mkdir -p, where a folder made inside a setgid folder (a cache shared by a group) takes its parent's mode,
    group-writable and setgid as the parent is, whatever the umask; elsewhere the umask decides, as mkdir's."""
    missing: list[Path] = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # made meanwhile by another process: its maker set the mode
        except FileNotFoundError as exc:  # its parent is there, yet takes no folder (HOME=/proc, a pseudo-filesystem)
            raise FileAccessError(
                f"cannot make the folder {folder}: {folder.parent} takes no new folders",
                hint="point HOME (or XDG_CACHE_HOME, ENVLOCK_CACHE_DIR) at a folder you can write",
            ) from exc
        parent_mode = folder.parent.stat().st_mode
        if parent_mode & stat.S_ISGID:
            folder.chmod(stat.S_IMODE(parent_mode))


def shared_file_mode(directory: Path, private: int = 0o644) -> int:
    """The mode of a file published into `directory`: in a setgid (group-shared) folder, readable by whoever may
    read the folder and writable by its owner only (entries are never modified), else `private`."""
    try:
        folder = directory.stat().st_mode
    except OSError:
        return private
    if not folder & stat.S_ISGID:
        return private
    return (stat.S_IMODE(folder) & 0o444) | 0o200


def share(path: Path, into: Path) -> None:
    """chmod a file about to be published into the folder `into` (mkstemp and mkdtemp make it 0600/0700): in a
    shared cache folder, readable by the group."""
    mode = shared_file_mode(into, -1)
    if mode != -1:
        path.chmod(mode)


def share_folder(folder: Path) -> None:
    """A work folder made by mkdtemp (0700) inside a shared folder takes its parent's mode: a group member may
    then sweep it once its maker is gone."""
    parent = folder.parent.stat().st_mode
    if parent & stat.S_ISGID:
        folder.chmod(stat.S_IMODE(parent))


def shared_scratch(scratch: Path) -> Path:
    """Make this user's scratch folder (`tmp/<uid>` of a cache): private to the user, inside a folder every user
    of a shared cache may add theirs to (another user's stale scratch is theirs to sweep, never ours)."""
    make_dirs(scratch.parent)
    with contextlib.suppress(FileExistsError):
        scratch.mkdir(mode=0o700)
    return scratch


@contextlib.contextmanager
def published_folder(final: Path, *, prefix: str, complete: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """A folder filled in a work folder beside `final` and renamed into place whole when the block ends, so a reader
    sees it complete or not at all. When another process published `final` first, its folder is kept (`complete`
    says whether that one may be taken; without it, it always is); a failure leaves no work folder behind."""
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    try:
        yield work
        try:
            work.rename(final)
        except OSError:
            if complete is not None and not complete(final):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write data to path through a temp file in the same directory, fsync, then rename over (group-readable in a
    shared cache folder)."""
    directory = path.parent
    make_dirs(directory)
    mode = shared_file_mode(directory, mode) if mode == 0o644 else mode
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise _as_meant(exc, path) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.chmod(mode)
        tmp.replace(path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise _as_meant(exc, path) from exc
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _as_meant(exc: OSError, path: Path) -> OSError:
    """The same failure, naming the file meant rather than the temp file beside it (which no longer exists)."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, str(path))


@contextlib.contextmanager
def writing_to(path: Path) -> Iterator[None]:
    """A block that streams into `path` (or its temp file): a failure the OS gives without a file name (a write()
    meeting a full disk) names `path`, so the one line says which file could not be written."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise _as_meant(exc, path) from exc
        raise


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
            if not _removable(entry):
                continue  # another user's, in a folder not shared for writing: theirs to sweep, not half-deleted
            if _owner_gone(entry.name, prefix) or entry.lstat().st_mtime < cutoff:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
    return removed


def _removable(entry: Path) -> bool:
    """Whether this user may remove the whole entry: its own, or one whose folder its group may write."""
    info = entry.lstat()
    if info.st_uid == os.getuid() or os.getuid() == 0:
        return True
    return not stat.S_ISDIR(info.st_mode) or bool(info.st_mode & stat.S_IWGRP and info.st_gid in os.getgroups())


@contextlib.contextmanager
def exclusive(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive flock on path (made if missing) for the block, across threads, processes and the users of a
    shared cache; `on_wait` is called first when another holder makes this one wait. A flock dies with its holder,
    so a killed build never leaves a lock to wait on. The file itself stays (removing it would race)."""
    make_dirs(path.parent)
    fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_lock(path: Path) -> int:
    """The lock file, opened so that every user of a shared cache can take it: made group-writable in a shared
    folder (NFS's fcntl locks need a writable descriptor), else opened read-only (a local flock needs no more)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError as exc:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # not there, and this user may not make it: the folder is the one to name
            raise PermissionError(exc.errno, exc.strerror, str(path.parent)) from exc
    with contextlib.suppress(OSError):
        folder = path.parent.stat().st_mode
        if folder & stat.S_ISGID and os.fstat(fd).st_uid == os.getuid():
            os.fchmod(fd, stat.S_IMODE(folder) & 0o666)
    return fd


def tree_size(root: Path) -> int:
    """Bytes of the regular files under root (links not followed)."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size  # noqa: PTH118
    return total


def mark_used(path: Path) -> None:
    """Touch a cache entry found in use: `envlock gc` leaves what was touched within its grace period alone. A cache
    this user may only read stays as it is."""
    with contextlib.suppress(OSError):
        os.utime(path)


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
    """A full disk or quota while `action` becomes one DiskFullError naming the file and each place's free space."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise disk_full(action, exc, places) from exc


def disk_full(action: str, exc: OSError, places: Iterable[Path] = ()) -> DiskFullError:
    """The one error for a full disk or quota met while `action`: the file, and the free space where it goes."""
    where = [Path(exc.filename)] if exc.filename else []
    free = []
    for place in dict.fromkeys([*(p.parent for p in where), *places]):
        with contextlib.suppress(OSError):
            free.append(f"{shutil.disk_usage(_existing(place)).free // (1 << 20)} MiB free in {_existing(place)}")
    what = "quota exceeded" if exc.errno == errno.EDQUOT else "disk full"
    writing = f": cannot write {exc.filename}" if exc.filename else ""
    return DiskFullError(f"{what} while {action}{writing} ({'; '.join(free) or 'free space unknown'})")


def is_disk_full(exc: BaseException) -> bool:
    """Whether an exception is a full disk or an exceeded quota."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def cache_writes(action: str, root: Path, doer: str = "this build") -> Iterator[None]:
    """A build's (or another `doer`'s) writes into the cache under `root`: a folder this user may not write there
    becomes one CacheNotWritableError naming the folder, its owner, group and mode; a full disk one DiskFullError."""
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(action, exc, (root,)) from exc
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not exc.filename:
            raise
        target = Path(exc.filename)
        if not target.is_relative_to(root):
            raise
        raise not_writable(target if target.is_dir() else target.parent, exc.errno == errno.EROFS, doer) from exc


# What the filesystem answers when the environment, not envlock, is at fault: the words for each, and whether a
# path-less error is still the environment's (a permission error of a syscall on no file may be anything).
_ACCESS = {
    errno.EROFS: "is on a read-only filesystem",
    errno.EACCES: "is not accessible to you (permission denied)",
    errno.EPERM: "is not accessible to you (operation not permitted)",
    errno.ENOTDIR: "has a file where a folder belongs",
    errno.EISDIR: "is a folder where a file belongs",
    errno.ELOOP: "is a symbolic link loop, or a link envlock does not follow",
}


def environment_error(exc: OSError, action: str) -> EnvlockError | None:
    """The one error for a filesystem failure while `action` that is the environment's (a read-only project, a
    folder of another user, a full disk, a file where a folder belongs, the working folder removed): one line naming
    the path, its owner and mode; None for anything else (that is a bug, and shows its traceback)."""
    if is_disk_full(exc):
        return disk_full(action, exc)
    if exc.errno == errno.ENOENT and exc.filename is None:
        return working_folder_removed(action)
    if exc.errno not in _ACCESS or exc.filename is None:
        return None
    path = Path(os.fsdecode(exc.filename))
    return FileAccessError(f"{path} {_ACCESS[exc.errno]} while {action}{_owner_mode(path)}", hint=_access_hint(exc))


def working_folder_removed(action: str) -> FileAccessError:
    """The one line for a working folder removed under envlock (os.getcwd() fails; `.` leads nowhere)."""
    return FileAccessError(
        f"the working folder was removed while {action}", hint="cd into an existing folder and run it again"
    )


def _owner_group(info: os.stat_result) -> tuple[str, str]:
    """A file's owner and group by name (by number where this host has no name for them)."""
    import grp  # noqa: PLC0415
    import pwd  # noqa: PLC0415

    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    return owner, group


def _owner_mode(path: Path) -> str:
    try:
        info = path.lstat()
    except OSError:
        return ""
    owner, group = _owner_group(info)
    return f" (owner {owner}, group {group}, mode {stat.S_IMODE(info.st_mode):04o})"


def _access_hint(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "run it where the project (and ENVLOCK_CACHE_DIR) can be written, or remount the filesystem read-write"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "run it as the folder's owner, have its owner grant you access, or set ENVLOCK_CACHE_DIR to your own"
    return "move what is in its place aside (envlock never removes what it did not make), then run it again"


def require_writable(folders: Iterable[Path]) -> None:
    """Refuse, before any work, when a cache folder a build must write exists and is not writable by this user."""
    for folder in folders:
        existing = _existing(folder)
        if not os.access(existing, os.W_OK | os.X_OK):
            raise not_writable(existing, read_only_fs=False)


def not_writable(folder: Path, read_only_fs: bool, doer: str = "this build") -> CacheNotWritableError:
    """The one line for a cache folder this user cannot write: who owns it, its group and mode, what to do."""
    folder = _existing(folder)
    info = folder.stat()
    owner, group = _owner_group(info)
    mode = f"{stat.S_IMODE(info.st_mode):04o}"
    why = "on a read-only filesystem" if read_only_fs else "not writable by you"
    return CacheNotWritableError(
        f"the cache folder {folder} (owner {owner}, group {group}, mode {mode}) is {why}, and {doer} must write there",
        hint=f"join group {group} and have the cache set up for the group (`chgrp -R {group} DIR && chmod -R g+rwX "
        "DIR && find DIR -type d -exec chmod g+s {} +`), or set ENVLOCK_CACHE_DIR to a folder you can write; "
        "running an image already built needs no write access",
    )


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# The most envlock reads whole of a file it expects to be small (a lock, pyproject.toml, a record, a requirements or
# params file, its own state): far above any real one (a 90-package CUDA lock is ~100 kB), far below memory.
SMALL_FILE_LIMIT = 64 << 20


def read_small(path: Path, limit: int = SMALL_FILE_LIMIT, *, follow_links: bool = True) -> bytes:
    """The bytes of a file envlock reads whole. Anything but a regular file (a FIFO, whose read would wait for a
    writer forever; a folder; a device), a file over `limit` bytes (a 2 GB file is not read into memory) and, with
    `follow_links` off, a symbolic link (for files only envlock writes, never as links) is refused as an OSError
    whose strerror says what it is; `unreadable` words any of them for a message."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO opens at once, without a writer
    try:
        fd = os.open(path, flags if follow_links else flags | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links:
            raise OSError(errno.ELOOP, "is a symbolic link, and envlock writes no link there", str(path)) from exc
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            code = errno.EISDIR if stat.S_ISDIR(info.st_mode) else errno.EINVAL
            raise OSError(code, f"is {_kind(info.st_mode)}, not a regular file", str(path))
        chunks: list[bytes] = []
        taken = 0
        while taken <= limit and (chunk := os.read(fd, min(1 << 20, limit + 1 - taken))):
            chunks.append(chunk)
            taken += len(chunk)
        if info.st_size > limit or taken > limit:
            size = max(info.st_size, taken)
            raise OSError(errno.EFBIG, f"is {size:,} bytes, larger than the {limit:,} envlock reads", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_small_text(path: Path, limit: int = SMALL_FILE_LIMIT, *, follow_links: bool = True) -> str:
    """A small file's text (UTF-8), read as `read_small` reads (UnicodeDecodeError when it is not UTF-8)."""
    return read_small(path, limit, follow_links=follow_links).decode("utf-8")


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a device")


def unreadable(exc: OSError | ValueError) -> str:
    """Why a file could not be read, in words for one line (the path is named by the caller, not repeated)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc)


def read_json(path: Path) -> Any:
    """A JSON file of envlock's own state, or None when it is missing or damaged (then it is simply remade)."""
    try:
        return json.loads(read_small_text(path))
    except (OSError, ValueError):
        return None


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes (hex), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
