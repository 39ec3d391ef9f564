"""Bring an exact image back: the engine, the registry by digest, an archive, or a rebuild — verified by ID."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from envlock.engine.archive import CHUNK, ImageArchive, Scan, scan, write_archive
from envlock.engine.docker import Engine, LayerHolder, Sink
from envlock.engine.runtimes import OwnImages
from envlock.errors import EngineError, EnvlockError, ImageArchiveError, RegistryError, RestoreError
from envlock.fsutil import writing_to
from envlock.report import Report, silent


@dataclass(frozen=True)
class Restored:
    """The image in the engine, and where it came from."""

    image_id: str
    source: str  # "engine" | "registry <repo@digest>" | "archive <path>" | "rebuild"


def verify_archive(path: Path) -> str:
    """Check a docker-archive: config sha256 = image ID, each layer's sha256 = its diff_id. Returns the image ID."""
    with ImageArchive(path) as archive:
        image = archive.image()
        archive.verify(image)
    return image.image_id


class _Tee:
    """A sink that writes through to a file and to the pipe the checking thread reads."""

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = sinks

    def write(self, data: bytes, /) -> int:
        for sink in self.sinks:
            sink.write(data)
        return len(data)


def _scanned_while_written(save: Callable[[Sink], None], handle: Sink, path: Path) -> Scan:
    """Run `save` into handle while a thread reads the same bytes as an archive: each byte is read once, on its way
    to disk, not again from the file afterwards. The thread always drains the pipe, so `save` never blocks on it."""
    read_end, write_end = os.pipe()
    outcome: list[Scan | BaseException] = []

    def check() -> None:
        with os.fdopen(read_end, "rb") as stream:
            try:
                outcome.append(scan(stream, f"the engine's export of {path.name}"))
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
    if isinstance(found, EnvlockError):
        raise found
    if isinstance(found, BaseException):
        raise ImageArchiveError(
            f"the engine's export of {path.name} is not a readable image archive: {found}"
        ) from found
    return found


def load_archive(path: Path, image_id: str, engine: Engine) -> str:
    """Load an archive's image in one read of it, verified on the way: no unverified byte is ever loaded.

    The config must hash to `image_id` before anything is sent. The engine then gets an archive written here,
    not the file's own: the config, a manifest made from it (no tags, no other images the file may carry), and
    each layer the engine lacks, read through a stream that holds its last chunk back until the layer matched its
    diff_id: a tampered layer never reaches the engine whole, and the cut archive loads nothing.
    """
    with ImageArchive(path) as archive:
        image = archive.image(image_id)
        diff_ids = list(image.config.diff_ids)
        held = engine.held_layers(diff_ids) if isinstance(engine, LayerHolder) else 0

        def write(sink: BinaryIO) -> None:
            layers = [(diff_id, archive.layer(image, index)) for index, diff_id in enumerate(diff_ids)]
            write_archive(sink, image.config.data, layers, held)

        try:
            loaded = engine.load(write, sum(member.size for member in image.layers[held:] if member))
        except OSError as exc:
            raise ImageArchiveError(f"archive {path} is not a readable image archive: {exc}") from exc
    if loaded != image_id:  # cannot happen with a verified config; never leave a wrong image behind
        engine.remove(loaded)
        raise RestoreError(f"archive {path}: the engine loaded {loaded[:19]}, not {image_id[:19]}")
    return loaded


def write_archive_file(engine: Engine, image_id: str, out: Path) -> str:
    """`docker save` the image into out (atomically), verified against its ID before it is kept: in one pass, the
    layers hashed as the engine streams them to the file."""
    partial = out.with_name(f".{out.name}.partial")
    try:  # a failed or interrupted export leaves no partial file behind
        with writing_to(out), partial.open("wb") as handle:
            scanned = _scanned_while_written(lambda sink: engine.save(image_id, sink), handle, out)
        found = scanned.image_id(image_id)
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
            except (EngineError, RegistryError, ImageArchiveError) as exc:  # a tampered copy: the next is tried
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
