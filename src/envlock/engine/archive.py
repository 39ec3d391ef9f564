"""The docker-archive (what `docker save` writes and `docker load` reads), in one room: the reader and the writer.

Reading: the manifest parsed strictly, a config returned only once its sha256 was checked (against the image ID
asked for, and against the digest its member name claims), each layer read through a stream that hashes it and
holds its last chunk back until the whole is its diff_id. The tar itself is parsed by envlock.safetar (files,
folders and links between members, safe names, caps): an archive may come from anywhere. Two ways in: a file
(`ImageArchive`, members read on demand) and a stream read once as it passes (`scan`, for an engine's export
checked on its way to disk). One failure, one error: a layer or a config that is not its digest is
ArchiveMismatchError, wherever it is found; anything else unreadable is ImageArchiveError.

Writing: `write_archive` streams a one-image archive from the config and the layers (files, sent by sendfile when
the sink takes it, or verified streams), the same bytes for the same inputs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from envlock.errors import ArchiveMismatchError, BundleError, ImageArchiveError
from envlock.safetar import Member, TarIndex, stream_members

MANIFEST = "manifest.json"
CHUNK = 1 << 20
# Manifests and configs are read whole: each at most SMALL_MEMBER, and a stream scan keeps (JSON by name, or an
# OCI blob) up to KEPT_MAX in all, so a crafted archive cannot fill the memory.
SMALL_MEMBER = 4 << 20
KEPT_MAX = 256 << 20
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# Where a member's name says what its content hashes to: `<hex>.json` (a config, docker 20.10) or `blobs/sha256/<hex>`.
_NAMED_DIGEST = re.compile(r"^(?:blobs/sha256/([0-9a-f]{64})|([0-9a-f]{64})\.json)$")


def sha256_digest(data: bytes) -> str:
    """`sha256:<hex>` of the bytes: how archives, registries and OCI layouts name content."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- reading ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestEntry:
    """One image of an archive's manifest.json: its config's member, its layers' members (base first), its tags."""

    config: str
    layers: tuple[str, ...]
    repo_tags: tuple[str, ...] = ()


def parse_manifest(data: bytes, source: str) -> tuple[ManifestEntry, ...]:
    """manifest.json, strictly: a non-empty list of {Config: name, Layers: [name, …], RepoTags: [name, …] | null}."""
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise ImageArchiveError(
            f"{source} is not a readable image archive: its {MANIFEST} is not JSON ({exc})"
        ) from exc
    if not isinstance(document, list) or not document:
        raise ImageArchiveError(f"{source} is not a readable image archive: its {MANIFEST} lists no image")
    entries = []
    for item in document:
        fields = item if isinstance(item, dict) else {}
        config, layers, tags = fields.get("Config"), fields.get("Layers"), fields.get("RepoTags")
        if not (
            isinstance(config, str)
            and isinstance(layers, list)
            and all(isinstance(name, str) for name in layers)
            and (tags is None or (isinstance(tags, list) and all(isinstance(tag, str) for tag in tags)))
        ):
            raise ImageArchiveError(
                f"{source} is not a readable image archive: an entry of its {MANIFEST} is not "
                "{Config: name, Layers: [names], RepoTags: [names] | null}"
            )
        entries.append(ManifestEntry(config, tuple(layers), tuple(tags or ())))
    return tuple(entries)


@dataclass(frozen=True)
class ImageConfig:
    """An image config whose sha256 was checked: its bytes (their digest is the image ID) and its diff_ids."""

    data: bytes
    image_id: str
    document: dict[str, Any]
    diff_ids: tuple[str, ...]


def verified_config(data: bytes, source: str, *, image_id: str | None = None, name: str = "") -> ImageConfig:
    """The config, once its sha256 is `image_id` (when given) and the digest its member `name` claims (when it
    claims one); else ArchiveMismatchError. Its diff_ids must be a list of sha256 digests."""
    found = sha256_digest(data)
    claimed = _NAMED_DIGEST.match(posixpath.normpath(name)) if name else None
    if claimed and found != "sha256:" + (claimed.group(1) or claimed.group(2)):
        raise ArchiveMismatchError(
            f"{source} is corrupt or tampered: its config {name} is not the digest it is named by"
        )
    if image_id is not None and found != image_id:
        raise ArchiveMismatchError(f"{source} holds image {found[:19]}, not {image_id[:19]}")
    try:
        document = json.loads(data)
        diff_ids = document["rootfs"]["diff_ids"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ImageArchiveError(f"{source} is not a readable image archive: its config has no rootfs.diff_ids") from exc
    if not (isinstance(diff_ids, list) and all(isinstance(d, str) and _DIGEST.match(d) for d in diff_ids)):
        raise ImageArchiveError(f"{source} is not a readable image archive: its config's diff_ids are not digests")
    return ImageConfig(data, found, document, tuple(diff_ids))


class VerifiedStream:
    """A layer's bytes as a read-only file: hashed as they are read, the last chunk held back until the whole is
    `diff_id` (else ArchiveMismatchError): a reader never gets all of a layer that is not its diff_id. `size`: the
    layer's length when known (an archive member's), -1 when not (a compressed blob's)."""

    def __init__(self, chunks: Iterator[bytes], diff_id: str, size: int = -1, *, what: str, source: str) -> None:
        self.diff_id = diff_id
        self.size = size
        self.what = what
        self.source = source
        self._chunks = chunks
        self._digest = hashlib.sha256()
        self._ready, self._at = b"", 0  # what may be handed out: _ready[_at:]
        self._pending = b""  # the last chunk read, held back until the next one (or the end, checked) is seen
        self._done = False

    def read(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes (all that is left for -1); b"" at the end, once the layer matched its diff_id."""
        while not self._done and (size < 0 or len(self._ready) - self._at < size):
            chunk = next(self._chunks, None)
            if chunk is None:
                self._finish()
                break
            self._digest.update(chunk)
            self._ready, self._at = self._ready[self._at :] + self._pending, 0
            self._pending = chunk
        end = len(self._ready) if size < 0 else min(len(self._ready), self._at + size)
        data = self._ready[self._at : end]
        self._at = end
        return data

    def drain(self) -> None:
        """Read the rest, only to check it."""
        while self.read(CHUNK):
            pass

    def _finish(self) -> None:
        self._done = True
        if "sha256:" + self._digest.hexdigest() != self.diff_id:
            raise mismatch(self.source, self.what, self.diff_id)
        self._ready, self._at, self._pending = self._ready[self._at :] + self._pending, 0, b""


def mismatch(source: str, what: str, diff_id: str) -> ArchiveMismatchError:
    """The one error for a layer that is not its diff_id."""
    return ArchiveMismatchError(f"{source} is corrupt or tampered: layer {what} is not {diff_id[:19]}")


@dataclass(frozen=True)
class ArchivedImage:
    """One image of an archive: its verified config, and the member behind each diff_id (None: left out)."""

    config: ImageConfig
    layers: tuple[Member | None, ...]
    names: tuple[str, ...]  # the manifest's names of the layers
    repo_tags: tuple[str, ...]

    @property
    def image_id(self) -> str:
        """The config's sha256."""
        return self.config.image_id


class ImageArchive:
    """A docker-archive file opened for reading (headers indexed once; contents read on demand, each checked): a
    path, or an open seekable file (which stays the caller's)."""

    def __init__(self, archive: Path | IO[bytes], source: str | None = None) -> None:
        self.source = source or f"archive {archive}"
        try:
            self.tar = TarIndex(archive, self.source)
        except BundleError as exc:
            raise ImageArchiveError(
                f"{self.source} is not a readable image archive: {_said(exc, self.source)}"
            ) from exc
        try:
            self.entries = parse_manifest(self._small(MANIFEST), self.source)
        except BaseException:
            self.tar.close()
            raise

    def __enter__(self) -> ImageArchive:
        return self

    def __exit__(self, *_: object) -> None:
        self.tar.close()

    def image(self, image_id: str | None = None, *, partial: bool = False) -> ArchivedImage:
        """The image `image_id` (None: the archive's only image), its config verified. A layer the manifest names
        but the archive lacks is an error, unless `partial` (an archive for an engine that holds those layers)."""
        if image_id is None:
            if len(self.entries) != 1:
                raise ImageArchiveError(f"{self.source} holds {len(self.entries)} images, not one")
            return self._image(self.entries[0], None, partial)
        held = []
        for entry in self.entries:
            config = self._small(entry.config)
            if sha256_digest(config) == image_id:
                return self._image(entry, image_id, partial)
            held.append(sha256_digest(config)[:19])
        raise ArchiveMismatchError(f"{self.source} holds image {', '.join(held)}, not {image_id[:19]}")

    def layer(self, image: ArchivedImage, index: int) -> VerifiedStream:
        """Layer `index` of the image (base first), as a stream verified against its diff_id."""
        member, diff_id = image.layers[index], image.config.diff_ids[index]
        if member is None:
            raise ImageArchiveError(f"{self.source} is not a readable image archive: it lacks {image.names[index]}")
        return VerifiedStream(self._chunks(member), diff_id, member.size, what=image.names[index], source=self.source)

    def verify(self, image: ArchivedImage) -> None:
        """Read every layer the archive holds through, checking each against its diff_id."""
        for index, member in enumerate(image.layers):
            if member is not None:
                self.layer(image, index).drain()

    def _image(self, entry: ManifestEntry, image_id: str | None, partial: bool) -> ArchivedImage:
        config = verified_config(self._small(entry.config), self.source, image_id=image_id, name=entry.config)
        if len(config.diff_ids) != len(entry.layers):
            raise ImageArchiveError(
                f"{self.source} lists {len(entry.layers)} layers for {len(config.diff_ids)} diff_ids"
            )
        layers = tuple(self.tar.file(name) for name in entry.layers)
        missing = [name for name, member in zip(entry.layers, layers, strict=True) if member is None]
        if missing and not partial:
            raise ImageArchiveError(f"{self.source} is not a readable image archive: it lacks {missing[0]}")
        return ArchivedImage(config, layers, entry.layers, entry.repo_tags)

    def _small(self, name: str) -> bytes:
        member = self.tar.file(name)
        if member is None:
            raise ImageArchiveError(f"{self.source} is not a readable image archive: it has no {name}")
        if member.size > SMALL_MEMBER:
            raise ImageArchiveError(f"{self.source}: {name} is {member.size} bytes, more than a manifest or config")
        return b"".join(self._chunks(member))

    def _chunks(self, member: Member) -> Iterator[bytes]:
        try:
            yield from self.tar.chunks(member)
        except (BundleError, OSError) as exc:
            raise ImageArchiveError(
                f"{self.source} is not a readable image archive: {_said(exc, self.source)}"
            ) from exc


def _said(exc: BaseException, source: str) -> str:
    """What a refusal says, less the source safetar names first (the caller names it)."""
    return exc.message.removeprefix(f"{source}: ") if isinstance(exc, BundleError) else str(exc)


@dataclass
class Scan:
    """One front-to-back read of an archive stream: each file's sha256, the small ones' bytes, the links."""

    source: str
    digests: dict[str, str] = field(default_factory=dict)
    small: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    kept_bytes: int = 0

    def file(self, name: str) -> str:
        """The file a name stands for, through links (at most 8)."""
        name = posixpath.normpath(name.removeprefix("./"))
        for _ in range(8):
            if name not in self.links:
                break
            name = self.links[name]
        return name

    def image_id(self, expected: str | None = None) -> str:
        """The archive's only image's ID (`expected`, when given), once its config and every layer matched their
        digests."""
        try:
            entries = parse_manifest(self.small[MANIFEST], self.source)
            config_name = self.file(entries[0].config)
            config = verified_config(self.small[config_name], self.source, image_id=expected, name=config_name)
        except KeyError as exc:
            raise ImageArchiveError(f"{self.source} is not a readable image archive: it has no {exc}") from exc
        if len(entries) != 1 or len(config.diff_ids) != len(entries[0].layers):
            raise ImageArchiveError(f"{self.source} is not a readable image archive: not one image, layer by layer")
        for diff_id, name in zip(config.diff_ids, entries[0].layers, strict=True):
            if self.digests.get(self.file(name)) != diff_id:
                raise mismatch(self.source, name, diff_id)
        return config.image_id


def scan(stream: IO[bytes], source: str) -> Scan:
    """Read an uncompressed archive stream once (nothing is sought back to): every file hashed, manifests and
    configs kept (capped), links noted. What it holds is checked by Scan.image_id."""
    found = Scan(source)
    try:
        for member, chunks in stream_members(stream, source):
            if member.kind in ("symlink", "hardlink"):
                found.links[member.name] = member.target
                continue
            if member.kind != "file":
                continue
            keep = member.size <= SMALL_MEMBER and (member.name.endswith(".json") or member.name.startswith("blobs/"))
            if keep and found.kept_bytes + member.size > KEPT_MAX:
                raise ImageArchiveError(
                    f"{source} is not a readable image archive: more than {KEPT_MAX >> 20} MiB of metadata-sized "
                    "members"
                )
            digest, kept = hashlib.sha256(), bytearray()
            for chunk in chunks:
                digest.update(chunk)
                if keep:
                    kept += chunk
            found.digests[member.name] = "sha256:" + digest.hexdigest()
            if keep:
                found.small[member.name] = bytes(kept)
                found.kept_bytes += len(kept)
    except BundleError as exc:
        raise ImageArchiveError(f"{source} is not a readable image archive: {_said(exc, source)}") from exc
    return found


# --- writing ----------------------------------------------------------------------------------------------------


class LayerStream(Protocol):
    """A layer's bytes to archive: its size is known before its first byte is read."""

    size: int

    def read(self, size: int = -1, /) -> bytes:
        """The next bytes."""
        ...


def write_archive(
    out: BinaryIO,
    config: bytes,
    layers: Sequence[tuple[str, Path | LayerStream]],
    held: int = 0,
    repo_tags: Sequence[str] = (),
) -> str:
    """Stream a one-image docker-archive (what `docker load` reads): the config, the manifest, then each layer at
    `<diff_id hex>/layer.tar`, deterministically. Returns the image ID.

    The manifest lists every layer, but the first `held` are left out: the engine already holds that stack
    (dockerd looks a layer up by chain ID before it opens its tar), so a load sends only the layers that changed;
    an engine that lacks one refuses the archive. A VerifiedStream layer that is not its diff_id raises before its
    last chunk is written: the archive ends inside that layer, and the engine's untar refuses the whole.
    """
    image_id = sha256_digest(config)
    manifest = archive_manifest(config, [diff_id for diff_id, _ in layers], repo_tags)
    # Written by hand, not through tarfile's stream mode: that re-slices its buffer in 10 KiB steps, which costs
    # more than the engine's own work on GBs of layers. Each layer file goes to the sink by sendfile when it can.
    written = _member(out, f"{image_id.removeprefix('sha256:')}.json", config)
    written += _member(out, MANIFEST, manifest)
    for diff_id, layer in layers[held:]:
        name = f"{diff_id.removeprefix('sha256:')}/layer.tar"
        written += _file_member(out, name, layer) if isinstance(layer, Path) else _stream_member(out, name, layer)
    end = tarfile.NUL * (2 * tarfile.BLOCKSIZE)  # the end-of-archive blocks, padded to a whole record as tar does
    out.write(end + tarfile.NUL * (-(written + len(end)) % tarfile.RECORDSIZE))
    out.flush()
    return image_id


def archive_manifest(config: bytes, diff_ids: Sequence[str], repo_tags: Sequence[str] = ()) -> bytes:
    """The manifest.json of a one-image archive whose layers are at `<diff_id hex>/layer.tar`."""
    layers = [f"{diff_id.removeprefix('sha256:')}/layer.tar" for diff_id in diff_ids]
    entry = {"Config": f"{hashlib.sha256(config).hexdigest()}.json", "RepoTags": list(repo_tags) or None}
    return json.dumps([{**entry, "Layers": layers}]).encode()


def _header(name: str, size: int) -> bytes:
    """A member's header (PAX, as every tar envlock writes)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> bytes:
    return tarfile.NUL * (-size % tarfile.BLOCKSIZE)


def _member(out: BinaryIO, name: str, data: bytes) -> int:
    chunk = _header(name, len(data)) + data + _padding(len(data))
    out.write(chunk)
    return len(chunk)


def _stream_member(out: BinaryIO, name: str, layer: LayerStream) -> int:
    header = _header(name, layer.size)
    out.write(header)
    copied = 0
    while chunk := layer.read(CHUNK):
        out.write(chunk)
        copied += len(chunk)
    if copied != layer.size:
        raise OSError(f"{name} was {copied} bytes, not the {layer.size} its header says")
    out.write(_padding(layer.size))
    return len(header) + layer.size + len(_padding(layer.size))


def _file_member(out: BinaryIO, name: str, path: Path) -> int:
    """A file's member: header, content (sendfile into a pipe or file, else 1 MiB copies), padding."""
    with path.open("rb") as source:
        size = os.fstat(source.fileno()).st_size
        header = _header(name, size)
        out.write(header)
        copied = 0
        try:
            target = out.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            target = -1
        if target >= 0:
            out.flush()
            while copied < size and (sent := os.sendfile(target, source.fileno(), copied, size - copied)):
                copied += sent
        else:
            while chunk := source.read(min(CHUNK, size - copied)):
                out.write(chunk)
                copied += len(chunk)
    if copied != size:
        raise OSError(f"{path} changed size while it was being archived")
    out.write(_padding(size))
    return len(header) + size + len(_padding(size))
