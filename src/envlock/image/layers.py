"""Deterministic layer tarballs: the same tree gives the same bytes, whoever builds it and whenever."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import re
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from envlock.fsutil import atomic_write_text, make_dirs, owned_prefix, read_json, sha256_file, share, share_folder

# Never compiled into a layer: caches and logs are machine- and time-dependent.
EXCLUDED_NAMES = frozenset({"__pycache__", ".DS_Store"})
EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".log")
_DIFF_ID = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Layer:
    """A layer file and its identities: diff_id over the tar, digest over the compressed blob."""

    tar: Path
    diff_id: str  # sha256:… of the uncompressed tar (what the image config lists)
    size: int


class _HashingWriter(io.RawIOBase):
    """Writes through to a file while hashing and counting."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.target.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)


def _walk(root: Path) -> Iterator[Path]:
    """Every path under root, parents before children, siblings in byte order of their names."""
    for child in sorted(root.iterdir(), key=lambda p: p.name.encode()):
        if child.name in EXCLUDED_NAMES or child.name.endswith(EXCLUDED_SUFFIXES):
            continue
        yield child
        if child.is_dir() and not child.is_symlink():
            yield from _walk(child)


def _normalized(info: tarfile.TarInfo, mtime: int) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = mtime
    info.pax_headers = {}
    if info.isdir():
        info.mode = 0o755
    elif info.issym():
        info.mode = 0o777
    else:
        info.mode = 0o755 if info.mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH) else 0o644
    return info


def write_layer(root: Path, out: Path, mtime: int, prefix: str = "") -> Layer:
    """Tar the tree under root (placed at `prefix` in the image) into out; return its diff_id."""
    parents = list(PurePosixPath(prefix).parents)[:-1] if prefix else []
    with out.open("wb") as handle:
        writer = _HashingWriter(handle)
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as archive:
            for directory in reversed(parents):
                info = tarfile.TarInfo(str(directory))
                info.type = tarfile.DIRTYPE
                archive.addfile(_normalized(info, mtime))
            if prefix:
                info = tarfile.TarInfo(prefix.strip("/"))
                info.type = tarfile.DIRTYPE
                archive.addfile(_normalized(info, mtime))
            for path in _walk(root):
                name = str(PurePosixPath(prefix.strip("/")) / path.relative_to(root).as_posix())
                info = archive.gettarinfo(str(path), arcname=name)
                if info.islnk():  # hardlinks become regular files: no dependency on link order
                    info = tarfile.TarInfo(name)
                    info.size = path.stat().st_size
                    info.mode = path.stat().st_mode
                info = _normalized(info, mtime)
                if info.isreg():
                    with path.open("rb") as content:
                        archive.addfile(info, content)
                else:
                    archive.addfile(info)
    return Layer(tar=out, diff_id="sha256:" + writer.digest.hexdigest(), size=writer.size)


def compress(layer: Layer, out: Path) -> str:
    """gzip a layer reproducibly (no name, mtime 0); returns the blob's sha256 digest."""
    digest = hashlib.sha256()
    with out.open("wb") as handle:
        writer = _HashingWriter(handle)
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=writer, mtime=0, compresslevel=6) as packed,
            layer.tar.open("rb") as source,
        ):
            for chunk in iter(lambda: source.read(1 << 20), b""):
                packed.write(chunk)
        digest = writer.digest
    return "sha256:" + digest.hexdigest()


def _stamp(path: Path) -> list[int]:
    """What changes when a file's bytes are rewritten or replaced: (size, mtime in ns, inode)."""
    info = path.stat()
    return [info.st_size, info.st_mtime_ns, info.st_ino]


class LayerStore:
    """Finished layer tarballs by content key, so a rebuild re-makes only the layers that changed.

    An entry is verified on read: its diff_id is hashed again whenever the tar's (size, mtime, inode) differ from
    those it was last verified at, and an entry whose bytes are not its diff_id's is removed (and so remade).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, key: str) -> Layer | None:
        """A finished, intact layer, or None (then the caller makes it; a damaged entry is removed first)."""
        meta = self.root / f"{key}.json"
        tar = self.root / f"{key}.tar"
        if not (meta.is_file() and tar.is_file()):
            return None
        data = read_json(meta)
        diff_id = data.get("diff_id") if isinstance(data, dict) else None
        size = data.get("size") if isinstance(data, dict) else None
        if not (isinstance(diff_id, str) and isinstance(size, int) and _DIFF_ID.fullmatch(diff_id)):
            return None
        try:
            stamp = _stamp(tar)
            if stamp != data.get("verified"):
                if stamp[0] != size or "sha256:" + sha256_file(tar) != diff_id:
                    self._discard(key)
                    return None
                # Verified once for these bytes: not hashed again until the file changes. A reader who may not
                # write a shared cache verifies every time instead.
                with contextlib.suppress(PermissionError):
                    self._write_meta(key, diff_id, size, stamp)
        except FileNotFoundError:  # removed meanwhile by another build that found it damaged
            return None
        return Layer(tar, diff_id, size)

    def put(self, key: str, made: Callable[[Path], Layer]) -> Layer:
        """Make a layer into the store; it appears only once complete, its metadata written atomically."""
        make_dirs(self.root)
        with tempfile.TemporaryDirectory(dir=self.root, prefix=owned_prefix(".making-")) as tmp:
            share_folder(Path(tmp))
            layer = made(Path(tmp) / "layer.tar")
            share(layer.tar, self.root)
            tar = self.root / f"{key}.tar"
            stamp = _stamp(layer.tar)  # rename keeps the inode and the mtime
            layer.tar.replace(tar)
            self._write_meta(key, layer.diff_id, layer.size, stamp)
        return Layer(tar, layer.diff_id, layer.size)

    def _write_meta(self, key: str, diff_id: str, size: int, stamp: list[int]) -> None:
        meta = {"diff_id": diff_id, "size": size, "verified": stamp}
        atomic_write_text(self.root / f"{key}.json", json.dumps(meta, sort_keys=True))

    def _discard(self, key: str) -> None:
        for suffix in (".json", ".tar"):
            with contextlib.suppress(FileNotFoundError, PermissionError):  # not ours to remove: it is made anew
                (self.root / f"{key}{suffix}").unlink()


class LayerTars:
    """The tar envlock keeps of a layer, by diff_id: the layer store's (verified as `LayerStore.get` verifies) or a
    built base's. The folders' metadata is read on the first question, once."""

    def __init__(self, layers: Path, bases: Path) -> None:
        self.store = LayerStore(layers)
        self.bases = bases
        self._index: dict[str, tuple[str, Path]] | None = None

    def __call__(self, diff_id: str) -> Path | None:
        """The layer's tar, None when envlock keeps none (or the store's copy is damaged)."""
        if self._index is None:
            self._index = self._scan()
        kind, where = self._index.get(diff_id, ("", Path()))
        if kind == "store":
            found = self.store.get(where.stem)
            return found.tar if found is not None and found.diff_id == diff_id else None
        return where if kind == "base" and where.is_file() and not where.is_symlink() else None

    def _scan(self) -> dict[str, tuple[str, Path]]:
        index: dict[str, tuple[str, Path]] = {}
        for kind, root, field in (("store", self.store.root, "diff_id"), ("base", self.bases, "diff-id")):
            for meta in sorted(root.glob("*.json")) if root.is_dir() else []:
                data = read_json(meta)
                diff_id = data.get(field) if isinstance(data, dict) else None
                if isinstance(diff_id, str) and _DIFF_ID.fullmatch(diff_id):
                    index.setdefault(diff_id, (kind, meta.with_suffix(".tar")))
        return index
