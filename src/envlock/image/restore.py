"""Bring an exact image back: the engine, the registry by digest, an archive, or a rebuild — verified by ID."""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from envlock.engine.docker import Engine, LayerHolder, Sink
from envlock.engine.runtimes import OwnImages
from envlock.errors import EngineError, RegistryError, RestoreError
from envlock.image.plan import archive_end, archive_header, archive_manifest, archive_member, archive_padding
from envlock.report import Report, silent


@dataclass(frozen=True)
class Restored:
    """The image in the engine, and where it came from."""

    image_id: str
    source: str  # "engine" | "registry <repo@digest>" | "archive <path>" | "rebuild"


def _member(archive: tarfile.TarFile, name: str) -> IO[bytes]:
    handle = archive.extractfile(name)
    if handle is None:
        raise RestoreError(f"the archive has no {name}")
    return handle


# While an archive is read every member is hashed; those that may be its manifest or a config (JSON by name, or an
# OCI blob) are kept whole up to SMALL_MEMBER each and KEPT_MAX in all: a crafted archive cannot fill the memory.
SMALL_MEMBER = 4 << 20
KEPT_MAX = 256 << 20
CHUNK = 1 << 20


@dataclass
class _Scan:
    """One sequential read of a docker-archive: every member's sha256, the small ones' bytes, the links."""

    digests: dict[str, str]
    small: dict[str, bytes]
    links: dict[str, str]
    kept_bytes: int = 0

    def digest(self, name: str) -> str | None:
        """A member's sha256, through a link (a newer engine's layer path may point into blobs/)."""
        for _ in range(8):
            if name not in self.links:
                break
            name = self.links[name]
        return self.digests.get(name)


def _scan(stream: IO[bytes]) -> _Scan:
    """Read an archive front to back once (tarfile's stream mode: nothing is sought back to)."""
    scan = _Scan({}, {}, {})
    with tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK) as archive:
        for member in archive:
            name = posixpath.normpath(member.name)
            if member.issym() or member.islnk():
                base = posixpath.dirname(name) if member.issym() else ""
                scan.links[name] = posixpath.normpath(posixpath.join(base, member.linkname))
                continue
            if not member.isfile():
                continue
            handle = archive.extractfile(member)
            if handle is None:
                continue
            keep = member.size <= SMALL_MEMBER and (name.endswith(".json") or name.startswith("blobs/"))
            if keep and scan.kept_bytes + member.size > KEPT_MAX:
                raise tarfile.ReadError(f"more than {KEPT_MAX >> 20} MiB of metadata-sized members")
            digest, kept = hashlib.sha256(), bytearray()
            for chunk in iter(lambda: handle.read(CHUNK), b""):  # noqa: B023  (consumed within the iteration)
                digest.update(chunk)
                if keep:
                    kept += chunk
            scan.digests[name] = "sha256:" + digest.hexdigest()
            if keep:
                scan.small[name] = bytes(kept)
                scan.kept_bytes += len(kept)
    return scan


def _checked(scan: _Scan, path: Path) -> str:
    """The image ID of a scanned archive whose layers all match their diff_ids (else RestoreError)."""
    try:
        manifest = json.loads(scan.small[posixpath.normpath("manifest.json")])[0]
        config_name = posixpath.normpath(manifest["Config"])
        config_bytes = scan.small[scan.links.get(config_name, config_name)]
        diff_ids = json.loads(config_bytes)["rootfs"]["diff_ids"]
        for diff_id, member in zip(diff_ids, manifest["Layers"], strict=True):
            if scan.digest(posixpath.normpath(member)) != diff_id:
                raise RestoreError(
                    f"archive {path} is corrupt or tampered: layer {member} is not {diff_id[:19]}",
                    hint="use another copy of the archive, the registry, or a rebuild from the lock",
                )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise RestoreError(f"archive {path} is not a readable image archive: {exc!r}") from exc
    return "sha256:" + hashlib.sha256(config_bytes).hexdigest()


def verify_archive(path: Path) -> str:
    """Check a docker-archive: config sha256 = image ID, each layer's sha256 = its diff_id. Returns the image ID."""
    try:
        with path.open("rb") as stream:
            scan = _scan(stream)
    except (tarfile.TarError, OSError) as exc:
        raise RestoreError(f"archive {path} is not a readable image archive: {exc}") from exc
    return _checked(scan, path)


class _Tee:
    """A sink that writes through to a file and to the pipe the checking thread reads."""

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = sinks

    def write(self, data: bytes, /) -> int:
        for sink in self.sinks:
            sink.write(data)
        return len(data)


def _scanned_while_written(save: Callable[[Sink], None], handle: Sink, path: Path) -> _Scan:
    """Run `save` into handle while a thread reads the same bytes as an archive: each byte is read once, on its way
    to disk, not again from the file afterwards. The thread always drains the pipe, so `save` never blocks on it."""
    read_end, write_end = os.pipe()
    outcome: list[_Scan | BaseException] = []

    def check() -> None:
        with os.fdopen(read_end, "rb") as stream:
            try:
                outcome.append(_scan(stream))
            except BaseException as exc:  # noqa: BLE001  (reported by the caller's thread)
                outcome.append(exc)
            while stream.read(CHUNK):
                pass

    thread = threading.Thread(target=check, name="envlock-archive-check", daemon=True)
    thread.start()
    try:
        with os.fdopen(write_end, "wb", buffering=CHUNK) as pipe:
            save(_Tee(handle, pipe))
    finally:
        thread.join()
    found = outcome[0]
    if isinstance(found, BaseException):
        raise RestoreError(f"the engine's export of {path.name} is not a readable image archive: {found}") from found
    return found


def load_archive(path: Path, image_id: str, engine: Engine) -> str:
    """Load an archive's image in one read of it, verified on the way: no unverified byte is ever loaded.

    The config must hash to `image_id` before anything is sent. The engine then gets an archive written here,
    not the file's own: the config, each layer the engine lacks (hashed while streamed; the last chunk is held
    back until the layer's digest matches its diff_id, so a tampered layer never even reaches the engine whole),
    and, last, a manifest made from the config (no tags, no other images the file may carry). dockerd reads the
    manifest only once the stream has ended: a stream cut short by a refusal has none, and loads nothing.
    """
    try:
        with tarfile.open(path) as archive:  # headers only: contents are read below, once, and only if needed
            config, names = _image_entry(archive, image_id, path)
            diff_ids: list[str] = json.loads(config)["rootfs"]["diff_ids"]
            if len(diff_ids) != len(names):
                raise RestoreError(f"archive {path} lists {len(names)} layers for {len(diff_ids)} diff_ids")
            held = engine.held_layers(diff_ids) if isinstance(engine, LayerHolder) else 0
            members = [archive.getmember(name) for name in names]

            def write(sink: BinaryIO) -> None:
                written = archive_member(sink, f"{image_id.removeprefix('sha256:')}.json", config)
                for index in range(held, len(diff_ids)):
                    written += _verified_member(archive, members[index], diff_ids[index], sink, path)
                written += archive_member(sink, "manifest.json", archive_manifest(config, diff_ids))
                archive_end(sink, written)

            loaded = engine.load(write, sum(members[index].size for index in range(held, len(diff_ids))))
    except (tarfile.TarError, KeyError, ValueError, OSError) as exc:
        raise RestoreError(f"archive {path} is not a readable image archive: {exc}") from exc
    if loaded != image_id:  # cannot happen with a verified config; never leave a wrong image behind
        engine.remove(loaded)
        raise RestoreError(f"archive {path}: the engine loaded {loaded[:19]}, not {image_id[:19]}")
    return loaded


def _image_entry(archive: tarfile.TarFile, image_id: str, path: Path) -> tuple[bytes, list[str]]:
    """The config whose sha256 is image_id, and the names of its layer members, from the archive's manifest."""
    held = []
    for entry in json.load(_member(archive, "manifest.json")):
        config = _member(archive, entry["Config"]).read()
        found = "sha256:" + hashlib.sha256(config).hexdigest()
        if found == image_id:
            return config, [str(name) for name in entry["Layers"]]
        held.append(found[:19])
    raise RestoreError(f"archive {path} holds image {', '.join(held) or 'none'}, not the recorded one")


def _verified_member(
    archive: tarfile.TarFile, member: tarfile.TarInfo, diff_id: str, sink: BinaryIO, path: Path
) -> int:
    """Stream one layer into the archive being loaded, refusing it before its last chunk if it is not diff_id."""
    name = f"{diff_id.removeprefix('sha256:')}/layer.tar"
    header = archive_header(name, member.size)
    sink.write(header)
    digest = hashlib.sha256()
    pending = b""
    with _member(archive, member.name) as layer:
        for chunk in iter(lambda: layer.read(1 << 20), b""):
            sink.write(pending)
            digest.update(chunk)
            pending = chunk
    if "sha256:" + digest.hexdigest() != diff_id:
        raise RestoreError(
            f"archive {path} is corrupt or tampered: layer {member.name} is not {diff_id[:19]}",
            hint="use another copy of the archive, the registry, or a rebuild from the lock",
        )
    sink.write(pending + archive_padding(member.size))
    return len(header) + member.size + len(archive_padding(member.size))


def write_archive_file(engine: Engine, image_id: str, out: Path) -> str:
    """`docker save` the image into out (atomically), verified against its ID before it is kept: in one pass, the
    layers hashed as the engine streams them to the file."""
    partial = out.with_name(f".{out.name}.partial")
    try:  # a failed or interrupted export leaves no partial file behind
        with partial.open("wb") as handle:
            scan = _scanned_while_written(lambda sink: engine.save(image_id, sink), handle, out)
        found = _checked(scan, out)
        if found != image_id:
            raise RestoreError(f"the engine exported image {found[:19]}, not {image_id[:19]}")
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return found


def restore_image(
    image_id: str,
    *,
    engine: Engine,
    repo_digests: tuple[str, ...] = (),
    archives: tuple[Path, ...] = (),
    rebuild: Callable[[], str] | None = None,
    reference: str | None = None,
    report: Report = silent,
) -> Restored:
    """Try, in order: the local engine, the registry by digest, archives, a rebuild; accept only `image_id`.

    The verified image gets its `name:tag` back (last, as in a build), so `envlock run` finds it again.
    """
    restored = _find(
        image_id, engine=engine, repo_digests=repo_digests, archives=archives, rebuild=rebuild, report=report
    )
    if reference:
        repository, _, tag = reference.rpartition(":")
        engine.tag(image_id, repository, tag)
    return restored


def _find(
    image_id: str,
    *,
    engine: Engine,
    repo_digests: tuple[str, ...],
    archives: tuple[Path, ...],
    rebuild: Callable[[], str] | None,
    report: Report,
) -> Restored:
    if engine.image_id(image_id) is not None:
        return Restored(image_id, "engine")
    tried: list[str] = []
    for digest in repo_digests:
        report(f"pulling {digest}")
        try:
            pulled = engine.pull(digest)
        except EngineError as exc:
            tried.append(f"registry {digest}: {exc.message}")
            continue
        if pulled == image_id:
            return Restored(image_id, f"registry {digest}")
        tried.append(f"registry {digest}: gave image {pulled[:19]}")
    for archive in archives:
        if not archive.is_file():
            tried.append(f"archive {archive}: missing")
            continue
        report(f"loading archive {archive} (verified while it loads)")
        try:
            load_archive(archive, image_id, engine)
        except RestoreError as exc:  # a tampered archive is refused, by name, and the next source is tried
            report(f"refused: {exc.message}")
            tried.append(exc.message)
            continue
        return Restored(image_id, f"archive {archive}")
    if rebuild is not None:
        report("rebuilding from the lock")
        rebuilt = rebuild()
        if rebuilt == image_id:
            return Restored(image_id, "rebuild")
        tried.append(f"rebuild from the lock: gave image {rebuilt[:19]}")
    raise RestoreError(
        f"could not restore image {image_id[:19]}" + (f" ({'; '.join(tried)})" if tried else ""),
        hint="push images (envlock build --push) or keep archives (envlock archive) of results you may need again",
    )


def restore_for_runtime(
    image_id: str,
    *,
    runtime: OwnImages,
    repo_digests: tuple[str, ...],
    through_engine: Callable[[], Restored],
    report: Report = silent,
) -> Restored:
    """Bring the image into a runtime with a store of its own (Podman, Charliecloud), accepted only as `image_id`.

    Held already: nothing to do. Pushed: the runtime gets it from the registry by digest itself, and the Docker
    engine is never asked (most HPC nodes have none). Never pushed: `through_engine`, the engine's restore, whose
    copy the runtime exports when it launches. What the node lacks is named in one line (RestoreError, exit 15).
    """
    if runtime.has_image(image_id):
        return Restored(image_id, f"{runtime.name}'s store")
    lacks = f"could not restore image {image_id[:19]} for {runtime.name}: this node does not hold it"
    if repo_digests:
        tried: list[str] = []
        for pushed in repo_digests:
            report(f"{runtime.name}: fetching {pushed}")
            try:
                runtime.pull(image_id, pushed)
            except (EngineError, RegistryError) as exc:
                tried.append(exc.message)
                continue
            return Restored(image_id, f"registry {pushed}")
        raise RestoreError(
            f"{lacks} and cannot get it from the registry ({'; '.join(tried)})",
            hint="let the node reach the registry (a plain-HTTP one listed in $ENVLOCK_INSECURE_REGISTRIES), "
            "or run where the image is",
        )
    try:
        return through_engine()
    except EngineError as exc:  # no engine on the node (or none reachable): say what is missing, in one line
        raise RestoreError(
            f"{lacks}, it was never pushed to a registry, and there is no Docker engine to take it from "
            f"({exc.message})",
            hint="push the image (envlock build --push) so nodes pull it by digest, or run where the image is",
        ) from exc
