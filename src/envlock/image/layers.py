"""Deterministic layer tarballs: the same tree gives the same bytes, whoever builds it and whenever."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from envlock.fsutil import read_json

# Never compiled into a layer: caches and logs are machine- and time-dependent.
EXCLUDED_NAMES = frozenset({"__pycache__", ".DS_Store"})
EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".log")


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


class LayerStore:
    """Finished layer tarballs by content key, so a rebuild re-makes only the layers that changed."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, key: str) -> Layer | None:
        """A finished layer, or None."""
        meta = self.root / f"{key}.json"
        tar = self.root / f"{key}.tar"
        if not (meta.is_file() and tar.is_file()):
            return None
        data = read_json(meta)
        if not isinstance(data, dict) or tar.stat().st_size != data.get("size"):
            return None
        return Layer(tar, data["diff_id"], data["size"])

    def put(self, key: str, made: Callable[[Path], Layer]) -> Layer:
        """Make a layer into the store; it appears only once complete."""
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".making-") as tmp:
            layer = made(Path(tmp) / "layer.tar")
            tar = self.root / f"{key}.tar"
            layer.tar.replace(tar)
            meta = self.root / f"{key}.json"
            meta.write_text(json.dumps({"diff_id": layer.diff_id, "size": layer.size}), encoding="utf-8")
        return Layer(tar, layer.diff_id, layer.size)
