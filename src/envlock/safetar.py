"""envlock's own tar reader for archives from elsewhere: a parser that lists what is allowed and refuses the rest.

Python's tar filters are not a security boundary (CVE-2025-4517 and its kin), and `filter=` does not exist in
Debian bookworm's Python 3.11.2, so the headers are read here (ustar, pax extended headers, GNU long names; octal
and base-256 numbers, checksums verified) and every write goes through directory file descriptors opened with
O_NOFOLLOW, one name at a time: nothing is ever followed out of the destination.

Two modes:

- `extract(archive, dest)` reads a bundle: regular files and folders only, safe names, no duplicates, size caps
  (per file, in all, members) and a compression-ratio cap for gzip/bz2/xz input. A first pass checks every header
  before a byte is written; the second pass writes and checks the caps again while copying (a header is not
  trusted alone). Files are created with O_CREAT|O_EXCL|O_NOFOLLOW, mode 0644 or 0755, never the member's owner.
- `extract_rootfs_layer(layer, rootfs)` applies an image layer (whose digest the caller has checked) onto a root
  file system: symlinks and hardlinks are members like any other, but no write goes through a symlink; no
  absolute or `..` names; devices and FIFOs are skipped (the runtime binds the host's /dev); setuid, setgid and
  group/other write bits are dropped; whiteouts (`.wh.NAME`, `.wh..wh..opq`) remove what the lower layers had.
- `TarIndex(path)` / `stream_members(stream)` read an image archive (`docker save`'s tar) without writing a byte:
  regular files, folders and links between members (docker save links a repeated layer to its first copy); safe
  names, no duplicates, a member cap; a link's target must name a member inside the archive. What the members
  mean (manifest, config, layers, digests) is envlock.engine.archive's business.
"""

from __future__ import annotations

import bz2
import errno
import functools
import gzip
import lzma
import os
import posixpath
import shutil
import stat
import unicodedata
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO, Literal, Protocol, cast

from envlock.errors import BundleError, UsageError

GIB = 1 << 30
# Defaults: a bundle with a multi-GB image archive (`envlock bundle --with-image`) passes; a bomb does not.
DEFAULT_MAX_BYTES = 64 * GIB
DEFAULT_MAX_FILE_BYTES = 32 * GIB
DEFAULT_MAX_RATIO = 100  # gzip of a real bundle: a few x; a gzip bomb: ~1000x (bz2, xz: more)
DEFAULT_MAX_MEMBERS = 1_000_000
RATIO_FLOOR = 16 << 20  # a tiny compressed tar (headers and zero padding) may legitimately exceed the ratio
ENVIRON_KEYS = {
    "max_bytes": "ENVLOCK_BUNDLE_MAX_BYTES",
    "max_file_bytes": "ENVLOCK_BUNDLE_MAX_FILE_BYTES",
    "max_ratio": "ENVLOCK_BUNDLE_MAX_RATIO",
    "max_members": "ENVLOCK_BUNDLE_MAX_MEMBERS",
}
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

BLOCK = 512
_ZERO = bytes(BLOCK)
_CHUNK = 1 << 20
_MAX_EXTENDED = 1 << 20  # a pax header or a GNU long name larger than this is not a name
_MAX_NAME_BYTES = 4095
_MAX_COMPONENT_BYTES = 255
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

_FILE = (b"0", b"\0")
_DIR = b"5"
_SYMLINK = b"2"
_HARDLINK = b"1"
_SKIPPED_IN_LAYERS = (b"3", b"4", b"6")
_TYPE_NAMES = {
    b"1": "a hardlink",
    b"2": "a symlink",
    b"3": "a character device",
    b"4": "a block device",
    b"6": "a FIFO",
    b"7": "a contiguous file",
    b"S": "a GNU sparse file",
    b"g": "a global pax header",
    b"V": "a volume label",
    b"M": "a multi-volume continuation",
    b"N": "an old GNU long name",
    b"D": "a GNU dump directory",
}
_CACHED_FOLDERS = 256  # open folder fds kept between members (the process's fd limit is often 1024)
_PAX_TEXT = ("path", "linkpath", "size")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Limits:
    """The caps a bundle is read under (bytes, except the ratio and the member count)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_ratio: int = DEFAULT_MAX_RATIO
    max_members: int = DEFAULT_MAX_MEMBERS

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], **overrides: int) -> Limits:
        """The defaults, then ENVLOCK_BUNDLE_MAX_* (an integer, with an optional K/M/G/T suffix), then `overrides`."""
        values: dict[str, int] = {}
        for field in fields(cls):
            variable = ENVIRON_KEYS[field.name]
            text = environ.get(variable, "").strip()
            if text:
                values[field.name] = parse_amount(variable, text)
        return replace(cls(**values), **overrides)


def parse_amount(variable: str, text: str) -> int:
    """An amount of bytes set in an environment variable: a whole number, with an optional K/M/G/T suffix."""
    unit = text[-1:].upper() if text[-1:].isalpha() else ""
    digits = text[: len(text) - len(unit)]
    if unit not in _UNITS or not digits.isdigit() or int(digits) <= 0:
        raise UsageError(
            f"{variable}={text!r} is not a positive whole number",
            hint=f"e.g. {variable}=64G (suffixes K, M, G, T are powers of 1024)",
        )
    return int(digits) * _UNITS[unit]


@dataclass(frozen=True)
class Member:
    """One member of an archive, as extracted."""

    name: str
    kind: Literal["file", "dir", "symlink", "hardlink"]
    size: int
    mode: int
    target: str = ""  # a link's target


def name_problem(name: str) -> str | None:
    """Why `name` is not a safe relative name for a member (or for a file a manifest lists); None when it is."""
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "a name that is not UTF-8"
    parts = name.split("/")
    checks = [
        (not name, "an empty name"),
        (any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in name), "a control character in the name"),
        ("\\" in name, "a backslash in the name"),
        (name.startswith("/"), "an absolute name"),
        (".." in parts, "a '..' component"),
        ("." in parts, "a '.' component"),
        ("" in parts, "an empty component ('//' or a trailing '/')"),
        (
            len(encoded) > _MAX_NAME_BYTES or any(len(p.encode("utf-8")) > _MAX_COMPONENT_BYTES for p in parts),
            "a name too long for the file system",
        ),
    ]
    return next((problem for failed, problem in checks if failed), None)


def looks_like_tar(path: Path) -> bool:
    """True for a file whose first block is a tar header, plain or under gzip, bz2 or xz (at most one block is
    decompressed; nothing else is read)."""
    try:
        with path.open("rb") as raw:
            compression = _compression(raw.read(6))
            raw.seek(0)
            stream = _seekable(raw, compression)
            block = stream.read(BLOCK)
    except (OSError, EOFError, zlib.error, lzma.LZMAError):
        return False
    return len(block) == BLOCK and _checksum_ok(block) and block[257:263] in (b"ustar\0", b"ustar ")


def extract(archive: Path, dest: Path, *, limits: Limits | None = None) -> list[Member]:
    """Unpack a bundle-like tar (plain, gzip, bz2 or xz) into the existing folder `dest`: regular files and
    folders only, every header checked before anything is written; refuses with one BundleError. `limits` defaults
    to Limits.from_environ(os.environ)."""
    limits = limits or Limits.from_environ(os.environ)
    source = str(archive)
    try:
        raw = archive.open("rb")
    except OSError as exc:
        raise BundleError(f"{source}: cannot be read: {exc.strerror or exc}", hint="check the path") from exc
    with raw:
        plan = _plan(_TarReader(_Input(raw, source, limits), source), source, limits)
        total = sum(m.size for m in plan)
        free = shutil.disk_usage(dest).free
        if total > free:
            raise BundleError(
                f"{source}: unpacks to {total} bytes, but only {free} are free under {dest}",
                hint="free some space there, or point TMPDIR at a larger disk",
            )
        raw.seek(0)
        _write_plan(_TarReader(_Input(raw, source, limits), source), source, limits, plan, dest)
    return plan


def _plan(reader: _TarReader, source: str, limits: Limits) -> list[Member]:
    """The first pass: every header checked against the member rules and the caps; nothing written."""
    plan: list[Member] = []
    files: set[str] = set()
    dirs: set[str] = set()
    implied: set[str] = set()
    total = 0
    while (entry := reader.next()) is not None:
        member = _bundle_member(entry, source)
        if len(plan) >= limits.max_members:
            raise _cap(source, f"has more than {limits.max_members} members", "max_members")
        if member.size > limits.max_file_bytes:
            raise _cap(
                source, f"member {member.name!r} is {member.size} bytes, over the per-file cap", "max_file_bytes"
            )
        total += member.size
        if total > limits.max_bytes:
            raise _cap(source, f"unpacks to more than {limits.max_bytes} bytes (the total cap)", "max_bytes")
        key = unicodedata.normalize("NFC", member.name)
        parents = ["/".join(key.split("/")[:i]) for i in range(1, key.count("/") + 1)]
        if key in files or key in dirs:
            raise BundleError(f"{source}: member {member.name!r} appears twice")
        if (member.kind == "file" and key in implied) or any(p in files for p in parents):
            raise BundleError(f"{source}: {member.name!r} is both a file and a folder")
        (files if member.kind == "file" else dirs).add(key)
        implied.update(parents)
        plan.append(member)
    return plan


def _bundle_member(entry: _Entry, source: str) -> Member:
    if entry.flag in _FILE:
        kind: Literal["file", "dir"] = "file"
        name = entry.name
    elif entry.flag == _DIR:
        kind, name = "dir", entry.name.removesuffix("/")
    else:
        what = _TYPE_NAMES.get(entry.flag, f"of unknown type {entry.flag!r}")
        raise BundleError(
            f"{source}: member {entry.name!r} is {what}: a bundle holds regular files and folders only",
            hint="a bundle made by `envlock bundle` has no links or devices: ask its sender for a new one",
        )
    if entry.sparse:
        raise BundleError(f"{source}: member {entry.name!r} is a sparse file: a bundle holds regular files only")
    problem = name_problem(name)
    if problem:
        raise BundleError(f"{source}: member {entry.name!r} has {problem}: refusing the bundle")
    mode = 0o755 if kind == "dir" or entry.mode & 0o111 else 0o644
    return Member(name, kind, entry.size, mode)


def _write_plan(reader: _TarReader, source: str, limits: Limits, plan: list[Member], dest: Path) -> None:
    """The second pass: the same members, written through directory fds; the caps checked again on the bytes."""
    total = 0
    with _Tree(dest, source) as tree:
        for expected in [*plan, None]:
            entry = reader.next()
            member = None if entry is None else _bundle_member(entry, source)
            if member != expected:
                raise BundleError(f"{source}: changed while being read", hint="unpack it again once it is complete")
            if member is None:
                return
            tree.trim()
            *parents, base = member.name.split("/")
            parent = tree.folder(parents, create=True)
            if member.kind == "dir":
                tree.make_dir(parents, base, member.mode)
                continue
            written = 0
            fd = tree.create(parent, base, member.mode)
            with os.fdopen(fd, "wb") as out:
                for chunk in reader.chunks():
                    written += len(chunk)
                    total += len(chunk)
                    if written > limits.max_file_bytes:
                        raise _cap(source, f"member {member.name!r} is over the per-file cap", "max_file_bytes")
                    if total > limits.max_bytes:
                        raise _cap(source, f"unpacks to more than {limits.max_bytes} bytes", "max_bytes")
                    out.write(chunk)


def _cap(source: str, what: str, field: str) -> BundleError:
    variable = ENVIRON_KEYS[field]
    return BundleError(
        f"{source}: {what}: refusing it",
        hint=f"if the bundle is genuine and you have the space, raise the cap: {variable}=… (see docs/audit.md)",
    )


class Readable(Protocol):
    """What a layer is read from: a file, or a stream that checks what passes through it."""

    def read(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes; b"" at the end."""
        ...


def extract_rootfs_layer(layer: Readable, rootfs: Path, *, source: str) -> None:
    """Apply one image layer (an uncompressed tar whose digest the caller checked) onto `rootfs`: files, folders,
    symlinks and hardlinks, whiteouts applied to what the lower layers left, devices and FIFOs skipped; no write
    ever goes through a symlink. Refuses with one BundleError naming `source`."""
    reader = _TarReader(_Input(cast("IO[bytes]", layer), source, None), source)  # read only: never sought nor stat'ed
    written: set[str] = set()  # this layer's names and their folders: whiteouts hide only the lower layers'
    with _Tree(rootfs, source) as tree:
        while (entry := reader.next()) is not None:
            tree.trim()
            name = _layer_name(entry.name, source)
            if name is None or entry.flag in _SKIPPED_IN_LAYERS:
                continue
            *parents, base = name.split("/")
            if base.startswith(WHITEOUT):
                _whiteout(tree, parents, base, written)
                continue
            if entry.sparse or entry.flag not in (*_FILE, _DIR, _SYMLINK, _HARDLINK):
                what = "a sparse file" if entry.sparse else _TYPE_NAMES.get(entry.flag, f"of type {entry.flag!r}")
                raise BundleError(f"{source}: member {entry.name!r} is {what}: not unpacked")
            parent = tree.folder(parents, create=True)
            if entry.flag == _DIR:
                tree.make_dir(parents, base, (entry.mode & 0o755) | 0o700, replace=True)
            elif entry.flag == _SYMLINK:
                if not entry.linkname:
                    raise BundleError(f"{source}: member {entry.name!r} is a symlink to nothing")
                tree.remove(parents, base)
                tree.call(name, functools.partial(os.symlink, entry.linkname, base, dir_fd=parent))
            elif entry.flag == _HARDLINK:
                _hardlink(tree, parents, base, entry)
            else:
                tree.remove(parents, base)
                fd = tree.create(parent, base, entry.mode & 0o755)
                with os.fdopen(fd, "wb") as out:
                    for chunk in reader.chunks():
                        out.write(chunk)
                    out.flush()
                    os.utime(out.fileno(), (entry.mtime, entry.mtime))
            written.update("/".join([*parents, base][:i]) for i in range(1, len(parents) + 2))


def _hardlink(tree: _Tree, parents: list[str], base: str, entry: _Entry) -> None:
    """A hardlink to a file already in the rootfs, its folder reached without following a symlink (linkat would
    follow one in the middle of the target's path)."""
    target = _layer_name(entry.linkname, tree.source)
    if target is None:
        raise BundleError(f"{tree.source}: member {entry.name!r} is a hardlink to the root")
    *target_parents, target_base = target.split("/")
    tree.remove(parents, base)
    try:
        source_dir = tree.folder(target_parents, create=False)
    except FileNotFoundError:
        raise BundleError(f"{tree.source}: member {entry.name!r} links to {target!r}, which is not there") from None
    parent = tree.folder(parents, create=True)
    tree.call(
        entry.name,
        lambda: os.link(target_base, base, src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False),
    )


def _layer_name(raw: str, source: str) -> str | None:
    """A layer member's name, `./` prefixes dropped (tar -C DIR . writes them); None for the root itself."""
    name = raw.removesuffix("/")
    while name.startswith("./"):
        name = name[2:]
    if name in ("", "."):
        return None
    problem = name_problem(name)
    if problem:
        raise BundleError(f"{source}: member {raw!r} has {problem}: not unpacked")
    return name


def _whiteout(tree: _Tree, parents: list[str], base: str, written: set[str]) -> None:
    """A whiteout removes what the lower layers have at its name (an opaque one: everything in its folder); what
    this layer itself wrote stays, as if every whiteout had been applied before the layer's own files."""
    if base == OPAQUE:
        try:
            parent = tree.folder(parents, create=False)
        except FileNotFoundError:
            return  # nothing below to hide
        for child in sorted(os.listdir(parent)):  # noqa: PTH208  (an fd: Path cannot list one)
            if "/".join([*parents, child]) not in written:
                tree.remove(parents, child)
        return
    hidden = base.removeprefix(WHITEOUT)
    if name_problem(hidden) or "/" in hidden:
        raise BundleError(f"{tree.source}: whiteout {'/'.join([*parents, base])!r} hides no valid name")
    if "/".join([*parents, hidden]) not in written:
        tree.remove(parents, hidden)


class _Tree:
    """A destination folder written only through directory fds opened with O_NOFOLLOW, one name at a time."""

    def __init__(self, root: Path, source: str) -> None:
        self.root = root
        self.source = source
        self.fds: dict[str, int] = {}

    def __enter__(self) -> _Tree:
        try:
            self.fds[""] = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise BundleError(f"{self.source}: cannot unpack into {self.root}: {exc.strerror or exc}") from exc
        return self

    def __exit__(self, *_: object) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def folder(self, parts: list[str], *, create: bool) -> int:
        """The fd of the folder `parts` below the root (kept open), made when `create`; a symlink or a file on the
        way is refused, never followed. FileNotFoundError when it is missing and not `create`."""
        key = "/".join(parts)
        if key in self.fds:
            return self.fds[key]
        fd = self.fds[""]
        for depth, part in enumerate(parts, start=1):
            here = "/".join(parts[:depth])
            if here in self.fds:
                fd = self.fds[here]
                continue
            try:
                opened = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                self.call(here, functools.partial(os.mkdir, part, 0o755, dir_fd=fd))
                opened = self._open_dir(fd, part, here)
            except OSError as exc:
                raise self._not_a_folder(here, exc) from exc
            self.fds[here] = fd = opened
        return fd

    def trim(self) -> None:
        """Close the cached folder fds when there are many (between members: no caller holds one then)."""
        if len(self.fds) > _CACHED_FOLDERS:
            for key in [k for k in self.fds if k]:
                os.close(self.fds.pop(key))

    def make_dir(self, parents: list[str], base: str, mode: int, *, replace: bool = False) -> None:
        """A folder (an existing folder is kept and merged; anything else there is replaced when `replace`)."""
        parent = self.folder(parents, create=True)
        name = "/".join([*parents, base])
        try:
            found = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            found = None
        if found is not None and not stat.S_ISDIR(found.st_mode):
            if not replace:
                raise BundleError(f"{self.source}: {name!r} is both a file and a folder")
            self.remove(parents, base)
            found = None
        if found is None:
            self.call(name, lambda: os.mkdir(base, 0o700, dir_fd=parent))
        fd = self._open_dir(parent, base, name)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def create(self, parent: int, base: str, mode: int) -> int:
        """A new file, open for writing: O_EXCL and O_NOFOLLOW, so nothing there is overwritten or followed."""
        fd: list[int] = []
        self.call(base, lambda: fd.append(os.open(base, _CREATE_FLAGS, mode, dir_fd=parent)))
        return fd[0]

    def remove(self, parents: list[str], base: str) -> None:
        """Whatever is at `base` (a folder with its contents, never following a symlink); nothing when absent."""
        try:
            parent = self.folder(parents, create=False)
            found = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        name = "/".join([*parents, base])
        for key in [k for k in self.fds if k == name or k.startswith(name + "/")]:
            os.close(self.fds.pop(key))  # the folder goes: its fd (and those below) may not be used again
        if stat.S_ISDIR(found.st_mode):
            self.call(name, lambda: shutil.rmtree(base, dir_fd=parent))
        else:
            self.call(name, lambda: os.unlink(base, dir_fd=parent))

    def _open_dir(self, parent: int, part: str, here: str) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise self._not_a_folder(here, exc) from exc

    def _not_a_folder(self, here: str, exc: OSError) -> BundleError:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return BundleError(
                f"{self.source}: {here!r} is a symlink or a file, not a folder: refusing to write through it"
            )
        return BundleError(f"{self.source}: cannot open {here!r}: {exc.strerror or exc}")

    def call(self, name: str, call: Callable[[], object]) -> None:
        """Run one write; its OSError becomes a BundleError naming the member."""
        try:
            call()
        except FileExistsError as exc:
            raise BundleError(f"{self.source}: {name!r} is already there: refusing to overwrite it") from exc
        except OSError as exc:
            raise BundleError(
                f"{self.source}: cannot write {name!r}: {exc.strerror or exc}",
                hint="check the free space and permissions of the folder it is unpacked into",
            ) from exc


# --- image archives: members listed (and read on demand), nothing written ----------------------------------------


def _archive_member(entry: _Entry, source: str) -> Member:
    """An image archive's member under its rules: a file, a folder or a link to another member, by a safe name."""
    raw = entry.name.removeprefix("./")  # a repacked archive (`tar -C dir -cf x.tar .`) names its members ./x
    kinds: dict[bytes, Literal["file", "dir", "symlink", "hardlink"]] = {
        b"0": "file", b"\0": "file", _DIR: "dir", _SYMLINK: "symlink", _HARDLINK: "hardlink"
    }  # fmt: skip
    kind = kinds.get(entry.flag)
    if kind is None or entry.sparse:
        what = "a sparse file" if entry.sparse else _TYPE_NAMES.get(entry.flag, f"of unknown type {entry.flag!r}")
        raise BundleError(f"{source}: member {entry.name!r} is {what}: an image archive holds files, folders and links")
    name = raw.removesuffix("/") if kind == "dir" else raw
    problem = name_problem(name)
    if problem:
        raise BundleError(f"{source}: member {entry.name!r} has {problem}: refusing the image archive")
    target = ""
    if kind in ("symlink", "hardlink"):
        # A symlink's target is relative to its folder, a hardlink's to the archive; either must stay inside it.
        base = posixpath.dirname(name) if kind == "symlink" else ""
        target = posixpath.normpath(posixpath.join(base, entry.linkname.removeprefix("./")))
        if not entry.linkname or entry.linkname.startswith("/") or name_problem(target):
            raise BundleError(
                f"{source}: member {entry.name!r} links to {entry.linkname!r}, outside the archive: refusing it"
            )
    return Member(name, kind, entry.size if kind == "file" else 0, entry.mode, target)


def _listed(reader: _TarReader, source: str, max_members: int) -> Iterator[tuple[Member, int]]:
    """Each member (checked) and where its data starts in the uncompressed stream; duplicates and too many refused."""
    seen: set[str] = set()
    while (entry := reader.next()) is not None:
        member = _archive_member(entry, source)
        key = unicodedata.normalize("NFC", member.name)
        if key in seen:
            raise BundleError(f"{source}: member {member.name!r} appears twice")
        seen.add(key)
        if len(seen) > max_members:
            raise BundleError(f"{source}: has more than {max_members} members: refusing it")
        yield member, reader.stream.count


def stream_members(
    stream: IO[bytes], source: str, *, max_members: int = DEFAULT_MAX_MEMBERS
) -> Iterator[tuple[Member, Iterator[bytes]]]:
    """The members of an uncompressed image archive read front to back once (a pipe will do): each member, checked,
    with its data as chunks (read them before the next member, or they are skipped). Refuses with BundleError."""
    reader = _TarReader(_Input(stream, source, None), source)
    for member, _ in _listed(reader, source, max_members):
        yield member, reader.chunks()


class TarIndex:
    """An image archive file (plain, or gzip, bz2, xz), its headers read once by this parser; a member's data read
    on demand by its offset. Links are followed inside the archive only. Refuses with BundleError naming `source`.
    A path is opened and closed here; an open file (seekable, at its start) stays the caller's."""

    def __init__(self, archive: Path | IO[bytes], source: str, *, max_members: int = DEFAULT_MAX_MEMBERS) -> None:
        self.source = source
        self._owned = isinstance(archive, Path)
        try:
            self._raw = archive.open("rb") if isinstance(archive, Path) else archive
        except OSError as exc:
            raise BundleError(f"{source}: cannot be read: {exc.strerror or exc}", hint="check the path") from exc
        try:
            stream = _Input(self._raw, source, None, file=True)
            self.members: dict[str, Member] = {}
            self._offsets: dict[str, int] = {}
            for member, offset in _listed(_TarReader(stream, source), source, max_members):
                self.members[member.name] = member
                self._offsets[member.name] = offset
            self._raw.seek(0)
            self._data = _seekable(self._raw, stream.compression)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the file (when it was opened here)."""
        if self._owned:
            self._raw.close()

    def __enter__(self) -> TarIndex:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def file(self, name: str) -> Member | None:
        """The regular file a name stands for, through links (at most 8); None when there is none."""
        name = posixpath.normpath(name.removeprefix("./")) if name else name
        for _ in range(8):
            member = self.members.get(name)
            if member is None or member.kind == "file":
                return member
            if member.kind == "dir":
                return None
            name = member.target
        return None

    def chunks(self, member: Member) -> Iterator[bytes]:
        """A regular file's data, exactly its size (seeked to: compressed input is decompressed up to it again)."""
        self._data.seek(self._offsets[member.name])
        left = member.size
        while left:
            try:
                data = self._data.read(min(left, _CHUNK))
            except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
                raise BundleError(f"{self.source}: damaged or changed while being read ({exc})") from exc
            if not data:
                raise BundleError(f"{self.source}: truncated inside the data of {member.name!r}")
            left -= len(data)
            yield data


# --- reading: the byte stream (decompressed, metered), then the tar headers ----------------------------------------


def _compression(magic: bytes) -> str:
    if magic.startswith(b"\x1f\x8b"):
        return "gzip"
    if magic.startswith(b"BZh"):
        return "bz2"
    if magic.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    return ""


class _Seekable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...


def _seekable(raw: IO[bytes], compression: str) -> _Seekable:
    """The file's uncompressed bytes, seekable (a compressed file's seek decompresses up to the offset)."""
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "bz2":
        return bz2.BZ2File(raw, "rb")
    if compression == "xz":
        return lzma.LZMAFile(raw, "rb")
    return raw


class _Input:
    """The archive's bytes: decompressed when compressed (and then metered against the ratio cap)."""

    def __init__(self, raw: IO[bytes], source: str, limits: Limits | None, *, file: bool | None = None) -> None:
        self.source = source
        self.raw = raw
        self.compression = ""
        self.size: int | None = None
        self.cap: int | None = None
        if limits is not None if file is None else file:  # a file: its own size and compression (seekable)
            self.size = raw.seek(0, os.SEEK_END)
            raw.seek(0)
            self.compression = _compression(raw.read(6))
            raw.seek(0)
            if self.compression and limits is not None:  # a bundle: the ratio cap
                self.cap = max(limits.max_ratio * self.size, RATIO_FLOOR)
        self.limits = limits
        self.stream = _seekable(raw, self.compression)
        self.count = 0

    def read(self, size: int) -> bytes:
        """Up to `size` bytes (fewer only at the end)."""
        try:
            data = self.stream.read(size)
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise BundleError(
                f"{self.source}: its {self.compression or 'tar'} stream is damaged or truncated ({exc})",
                hint="the file is incomplete or corrupted: copy it again, or ask its sender for a new one",
            ) from exc
        self.count += len(data)
        if self.cap is not None and self.count > self.cap and self.limits is not None:
            raise _cap(
                self.source,
                f"decompresses to more than {self.limits.max_ratio}x its {self.size} bytes (a compression bomb?)",
                "max_ratio",
            )
        return data

    def skip(self, size: int) -> bool:
        """Pass over `size` bytes; False when the stream ends first. A plain file is seeked, not read."""
        if self.size is not None and not self.compression:
            end = self.raw.tell() + size
            if end > self.size:
                return False
            self.raw.seek(end)
            self.count += size
            return True
        while size:
            data = self.read(min(size, _CHUNK))
            if not data:
                return False
            size -= len(data)
        return True

    def exact(self, size: int) -> bytes | None:
        """Exactly `size` bytes, or None when the stream ends first."""
        parts: list[bytes] = []
        left = size
        while left:
            data = self.read(left)
            if not data:
                return None
            parts.append(data)
            left -= len(data)
        return b"".join(parts)


@dataclass(frozen=True)
class _Entry:
    """A member's header, its pax and GNU long-name extensions applied; nothing checked beyond the format."""

    name: str
    flag: bytes
    size: int
    mode: int
    mtime: int
    linkname: str
    sparse: bool


class _TarReader:
    """Tar headers one by one from an _Input; a member's data is read with chunks() or skipped by next()."""

    def __init__(self, stream: _Input, source: str) -> None:
        self.stream = stream
        self.source = source
        self.remaining = 0
        self.padding = 0
        self.current = ""

    def next(self) -> _Entry | None:
        """The next member's header; None at the end-of-archive marker (which must be there)."""
        if not self.stream.skip(self.remaining + self.padding):
            raise self._truncated(f"inside the data of {self.current!r}")
        self.remaining = self.padding = 0
        extended: dict[str, str] = {}  # pax records, and GNU long names under "GNU.L" / "GNU.K"
        while True:
            at = self.stream.count
            block = self._header(at)
            if block is None:
                if extended:
                    raise self._bad(at, "an extended header with no member after it")
                self._trailer()
                return None
            if block[156:157] not in (b"x", b"L", b"K"):
                return self._entry(block, at, extended)
            extended.update(self._extension(block, at))

    def chunks(self) -> Iterator[bytes]:
        """The current member's data, exactly as many bytes as its header says (or a BundleError)."""
        while self.remaining:
            data = self.stream.read(min(self.remaining, _CHUNK))
            if not data:
                raise self._truncated(f"inside the data of {self.current!r}")
            self.remaining -= len(data)
            yield data

    def _header(self, at: int) -> bytes | None:
        """One header block, its checksum and format checked; None for a zero block (the end-of-archive marker)."""
        block = self.stream.exact(BLOCK)
        if block is None:
            raise self._truncated("before its end-of-archive marker")
        if block == _ZERO:
            return None
        if not _checksum_ok(block):
            raise self._bad(at, "a header whose checksum is wrong (not a tar file, or damaged)")
        if block[257:265] not in (b"ustar\x0000", b"ustar  \x00"):
            raise self._bad(at, "a header that is neither POSIX (ustar/pax) nor GNU tar")
        if _number(block[124:136]) is None:
            raise self._bad(at, "a header with a malformed size")
        return block

    def _extension(self, block: bytes, at: int) -> dict[str, str]:
        """A pax extended header's records, or a GNU long name ('L') or long link target ('K')."""
        flag, size = block[156:157], _number(block[124:136]) or 0
        if size > _MAX_EXTENDED:
            raise self._bad(at, f"an extended header of {size} bytes")
        data = self.stream.exact(size)
        if data is None or not self.stream.skip(-size % BLOCK):
            raise self._truncated("inside an extended header")
        try:
            if flag == b"x":
                return _pax_records(data)
            return {f"GNU.{flag.decode()}": data.split(b"\0", 1)[0].decode("utf-8")}
        except ValueError as exc:  # UnicodeDecodeError included
            raise self._bad(at, f"a malformed extended header ({exc})") from exc

    def _entry(self, block: bytes, at: int, extended: dict[str, str]) -> _Entry:
        flag = block[156:157]
        try:
            name = _field(block[0:100])
            if block[257:263] == b"ustar\0":  # POSIX: a prefix field; GNU keeps times there
                prefix = _field(block[345:500])
                name = f"{prefix}/{name}" if prefix else name
            linkname = _field(block[157:257])
        except UnicodeDecodeError as exc:
            raise self._bad(at, "a member name that is not UTF-8") from exc
        name = extended.get("path", extended.get("GNU.L", name))
        linkname = extended.get("linkpath", extended.get("GNU.K", linkname))
        size = _number(block[124:136]) or 0
        if "size" in extended:
            if not extended["size"].isdigit():
                raise self._bad(at, f"a pax size {extended['size']!r}")
            size = int(extended["size"])
        mode, mtime = _number(block[100:108]), _number(block[136:148])
        if mode is None or mtime is None:
            raise self._bad(at, f"member {name!r} with a malformed mode or time")
        carries_data = flag in (*_FILE, b"7", b"S") or flag not in (*_TYPE_NAMES, _DIR)
        if size and not carries_data:
            raise self._bad(at, f"member {name!r} that is not a file but has {size} bytes of data")
        self.remaining, self.padding, self.current = size, -size % BLOCK, name
        sparse = flag == b"S" or any(key.startswith("GNU.sparse.") for key in extended)
        return _Entry(name, flag, size, mode, mtime, linkname, sparse)

    def _trailer(self) -> None:
        """After the end-of-archive marker only zero padding may follow (not a second archive, not data)."""
        while data := self.stream.read(_CHUNK):
            if data.count(0) != len(data):
                raise self._bad(self.stream.count - len(data), "data after the end-of-archive marker")

    def _bad(self, at: int, what: str) -> BundleError:
        return BundleError(
            f"{self.source}: not a readable tar: {what} at byte {at}",
            hint="the file is damaged or not an archive envlock wrote: ask its sender for a new one",
        )

    def _truncated(self, where: str) -> BundleError:
        return BundleError(
            f"{self.source}: truncated: the archive ends {where}",
            hint="the file is incomplete: copy it again (compare its size with the sender's)",
        )


def _field(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8")


def _number(raw: bytes) -> int | None:
    """A numeric header field: octal digits (NUL or space padded) or GNU base-256; None when malformed or < 0."""
    if raw[0] & 0x80:
        return None if raw[0] & 0x40 else int.from_bytes(bytes([raw[0] & 0x3F]) + raw[1:], "big")  # 0x40: < 0
    text = raw.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if any(c not in b"01234567" for c in text):
        return None
    return int(text, 8)


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156])
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    signed = unsigned - 256 * sum(1 for b in (*block[:148], *block[156:]) if b & 0x80)
    return stored is not None and stored in (unsigned, signed)


def _pax_records(data: bytes) -> dict[str, str]:
    """`LENGTH KEY=VALUE\\n` records, parsed strictly (every length, every separator, UTF-8)."""
    records: dict[str, str] = {}
    at = 0
    while at < len(data):
        space = data.find(b" ", at)
        if space < 0 or not data[at:space].isdigit():
            raise ValueError(f"a record without a length at {at}")
        end = at + int(data[at:space])
        if end > len(data) or end <= space + 1 or data[end - 1 : end] != b"\n" or b"=" not in data[space + 1 : end]:
            raise ValueError(f"a record of a wrong length at {at}")
        key, value = data[space + 1 : end - 1].split(b"=", 1)
        name = key.decode("utf-8")
        # Names must be UTF-8; other values may be bytes (SCHILY.xattr.security.capability in image layers).
        records[name] = value.decode("utf-8", "strict" if name in _PAX_TEXT else "surrogateescape")
        at = end
    return records
