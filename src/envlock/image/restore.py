"""Bring an exact image back: the engine, the registry by digest, an archive, or a rebuild — verified by ID."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from envlock.engine.docker import Engine
from envlock.errors import EngineError, RestoreError
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


def _stream(path: Path, sink: BinaryIO) -> None:
    with path.open("rb") as source:
        shutil.copyfileobj(source, sink, 1 << 20)


def verify_archive(path: Path) -> str:
    """Check a docker-archive: config sha256 = image ID, each layer's sha256 = its diff_id. Returns the image ID."""
    try:
        with tarfile.open(path) as archive:
            manifest = json.load(_member(archive, "manifest.json"))[0]
            config_bytes = _member(archive, manifest["Config"]).read()
            diff_ids = json.loads(config_bytes)["rootfs"]["diff_ids"]
            for diff_id, member in zip(diff_ids, manifest["Layers"], strict=True):
                digest = hashlib.sha256()
                with _member(archive, member) as layer:
                    for chunk in iter(lambda: layer.read(1 << 20), b""):
                        digest.update(chunk)
                if "sha256:" + digest.hexdigest() != diff_id:
                    raise RestoreError(
                        f"archive {path} is corrupt or tampered: layer {member} is not {diff_id[:19]}",
                        hint="use another copy of the archive, the registry, or a rebuild from the lock",
                    )
    except (tarfile.TarError, KeyError, ValueError, OSError) as exc:
        raise RestoreError(f"archive {path} is not a readable image archive: {exc}") from exc
    return "sha256:" + hashlib.sha256(config_bytes).hexdigest()


def write_archive_file(engine: Engine, image_id: str, out: Path) -> str:
    """`docker save` the image into out (atomically), verified against its ID before it is kept."""
    partial = out.with_name(f".{out.name}.partial")
    try:
        engine.save(image_id, partial)  # inside: a failed or interrupted export leaves no partial file behind
        found = verify_archive(partial)
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
        report(f"verifying archive {archive}")
        try:
            found = verify_archive(archive)
        except RestoreError as exc:  # a tampered archive is refused, by name, and the next source is tried
            report(f"refused: {exc.message}")
            tried.append(exc.message)
            continue
        if found != image_id:
            tried.append(f"archive {archive} holds image {found[:19]}, not the recorded one")
            continue
        loaded = engine.load(functools.partial(_stream, archive))
        if loaded == image_id:
            return Restored(image_id, f"archive {archive}")
        tried.append(f"archive {archive}: the engine loaded {loaded[:19]}")
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
