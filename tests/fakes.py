"""Every fake at envlock's boundaries, written once: resolver, wheel fetcher, base builder, engine, registry,
launcher, NVML, MLflow tracker, Slurm. Unit tests drive the real core through them.

Each fake subclasses its Protocol (or, for a callable, is assigned to a variable of the Protocol's type at the
bottom of this module), so mypy fails the moment a fake drifts from what the core asks of the real adapter.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import posixpath
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pynvml

from envlock.cluster.slurm import Command
from envlock.engine.archive import ArchivedImage, ImageArchive, write_archive
from envlock.engine.docker import ArchiveWriter, Engine, ImageInfo, Sink
from envlock.engine.launch import Launcher, LaunchSpec
from envlock.engine.runtimes import RuntimeInfo, StreamSink
from envlock.errors import (
    ArchiveMismatchError,
    DownloadError,
    EngineError,
    HostProbeError,
    ImageArchiveError,
    NvmlUnavailableError,
    RegistryError,
    TrackingError,
)
from envlock.image.bases import BaseBuilder, BaseStore
from envlock.image.layers import LayerStore
from envlock.image.plan import ImagePlan
from envlock.image.registry import CHUNK_BYTES, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, Blob, Registry, write_blob
from envlock.image.wheels import Fetcher, Response, WheelCache
from envlock.lock.backend import BackendMetadata, MetadataSource
from envlock.lock.project import lock_project
from envlock.lock.recipes import Recipe
from envlock.lock.resolve import LockedFile, LockedPackage, Resolver, ResolveRequest
from envlock.lock.spec import Spec, load_spec
from envlock.run.hostprobe import HostState, Nvml, probe_host
from envlock.run.tracking import TrackedRun, Tracker, TrackingTarget
from tests.wheelmaker import build_wheel

# --- Packages -------------------------------------------------------------------------------------------------


@dataclass
class FakeEvidence:
    """The run core's evidence writer, recording which run folders it was asked to attest (and, when `real`,
    writing the real attestation, unsigned)."""

    attested: list[Path] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    real: bool = False

    @property
    def imports(self) -> tuple[str, ...]:
        """Nothing to import ahead."""
        return ()

    def image_built(self, project_dir: Path, plan: ImagePlan, image_id: str, pushed: str | None) -> None:
        """Record the image."""
        self.images.append(image_id)

    def run_ended(self, run_dir: Path) -> None:
        """Record the folder (and attest it for real when asked)."""
        self.attested.append(run_dir)
        if self.real:
            from envlock.evidence.attest import attest_run  # noqa: PLC0415

            attest_run(run_dir, None)


def wheel(name: str, version: str, tag: str = "py3-none-any", day: int = 1) -> LockedFile:
    """A plausible wheel file entry; its sha256 is derived from its name so it is stable."""
    filename = f"{name.replace('-', '_')}-{version}-{tag}.whl"
    return LockedFile(
        name=filename,
        url=f"https://files.example/{filename}",
        sha256=hashlib.sha256(filename.encode()).hexdigest(),
        size=1000 + len(filename),
        upload_time=datetime(2024, 10, day, 12, 0, 0, tzinfo=UTC),
    )


def package(name: str, version: str, tag: str = "py3-none-any", day: int = 1) -> LockedPackage:
    """A locked package with one plausible wheel."""
    return LockedPackage(name=name, version=version, wheels=(wheel(name, version, tag, day),))


TORCH_251_AMD64 = [
    package("torch", "2.5.1", "cp311-cp311-manylinux1_x86_64", day=29),
    package("nvidia-cuda-runtime-cu12", "12.4.127", "py3-none-manylinux2014_x86_64"),
    package("nvidia-cudnn-cu12", "9.1.0.70", "py3-none-manylinux2014_x86_64"),
    package("nvidia-nccl-cu12", "2.21.5", "py3-none-manylinux2014_x86_64"),
    package("nvidia-cublas-cu12", "12.4.5.8", "py3-none-manylinux2014_x86_64"),
    package("triton", "3.1.0", "cp311-cp311-manylinux_2_17_x86_64"),
    package("filelock", "3.16.1"),
]


# --- Locking and fetching --------------------------------------------------------------------------------------


@dataclass
class FakeResolver(Resolver):
    """Answers from a table of platform → packages; records every request it was given."""

    by_platform: Mapping[str, Sequence[LockedPackage]]
    name: str = "fake"
    requests: list[ResolveRequest] = field(default_factory=list)
    error: Exception | None = None

    def version(self) -> str:
        return "fake 1.0"

    def resolve(self, request: ResolveRequest) -> list[LockedPackage]:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        return sorted(self.by_platform[request.target.platform], key=lambda p: p.name)


@dataclass
class FakeFetcher(Fetcher):
    """Serves bytes by URL; can break a body after N bytes, serve other bytes, and honour ranges or not."""

    files: dict[str, bytes]
    break_after: dict[str, int] = field(default_factory=dict)
    honour_ranges: bool = True
    calls: list[tuple[str, int]] = field(default_factory=list)

    @contextlib.contextmanager
    def open(self, url: str, offset: int) -> Iterator[Response]:
        self.calls.append((url, offset))
        if url not in self.files:
            raise DownloadError(f"cannot fetch {url}: HTTP 404")
        data = self.files[url]
        start = offset if self.honour_ranges else 0
        limit = self.break_after.pop(url, None)

        def body() -> Iterator[bytes]:
            end = len(data) if limit is None else limit
            for i in range(start, end, 7):
                yield data[i : min(i + 7, end)]
            if limit is not None:
                raise DownloadError(f"download of {url} broke off: ConnectionError")

        yield Response(body(), start, len(data))


class FakeBaseBuilder(BaseBuilder):
    """Writes a tiny root filesystem with a dpkg status file instead of running mmdebstrap."""

    def __init__(self, available: bool = True) -> None:
        self.builds = 0
        self.recipes: list[Recipe] = []
        self.python_version = "3.11.2-1+b1"
        self.can_build = available
        self.platforms = {"linux/amd64", "linux/arm64"}  # as on a machine with qemu's binfmt handlers

    def available(self) -> bool:
        return self.can_build

    def builds_for(self, platform: str) -> bool:
        return self.can_build and platform in self.platforms

    def build(self, recipe: Recipe, platform: str, out: Path) -> None:
        self.builds += 1
        self.recipes.append(recipe)
        status = f"Package: python3\nStatus: install ok installed\nVersion: {self.python_version}\n\n".encode()
        with tarfile.open(out, "w") as tar:
            info = tarfile.TarInfo("var/lib/dpkg/status")
            info.size = len(status)
            tar.addfile(info, io.BytesIO(status))


# --- Registry and engine ---------------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class FakeRegistry(Registry):
    """A distribution registry in memory: blobs and manifests per repository, every upload checked by digest.

    `has_blob`, `put_blob` and `put_manifest` are what a push uses; `manifest` and `blob` are the read side that
    FakeEngine.pull uses, as dockerd reads a real registry.
    """

    host: str = "registry.example:5000"
    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (repository, digest) → bytes
    manifests: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (repository, tag or digest) → bytes
    uploads: list[str] = field(default_factory=list)  # digests, in upload order
    # What a GET of a blob sends instead of the stored bytes (a hostile or broken registry), as chunks on the wire.
    wire: dict[tuple[str, str], Callable[[], Iterator[bytes]]] = field(default_factory=dict)

    def has_blob(self, repository: str, digest: str) -> bool:
        return (repository, digest) in self.blobs

    def put_blob(self, repository: str, blob: Blob) -> None:
        if blob.data is not None:
            data = blob.data
        elif blob.path is not None:
            data = blob.path.read_bytes()
        else:
            raise RegistryError(f"the registry {self.host} would not upload {blob.digest[:19]}: HTTP 400 no body")
        if _sha256(data) != blob.digest or len(data) != blob.size:
            raise RegistryError(
                f"the registry {self.host} would not upload {blob.digest[:19]} to {repository}: HTTP 400 "
                '{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"}]}'
            )
        self.blobs[(repository, blob.digest)] = data
        self.uploads.append(blob.digest)

    def put_manifest(self, repository: str, reference: str, manifest: bytes, media_type: str = OCI_MANIFEST) -> str:
        document = json.loads(manifest)
        if media_type == OCI_INDEX:  # an index refers to manifests the repository must already hold
            wanted = [(self.manifests, d["digest"]) for d in document.get("manifests", [])]
        else:
            wanted = [(self.blobs, d["digest"]) for d in [document["config"], *document["layers"]]]
        for store, digest in wanted:
            if (repository, digest) not in store:
                raise RegistryError(
                    f"the registry {self.host} would not store the manifest of {repository}:{reference}: HTTP 400 "
                    '{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry"}]}'
                )
        digest = _sha256(manifest)
        self.manifests[(repository, reference)] = manifest
        self.manifests[(repository, digest)] = manifest
        return digest

    def manifest(self, repository: str, reference: str) -> bytes | None:
        """GET /v2/<repository>/manifests/<tag or digest>."""
        return self.manifests.get((repository, reference))

    def blob(self, repository: str, digest: str) -> bytes | None:
        """GET /v2/<repository>/blobs/<digest>, read whole (a wired blob may never end: reading it whole would
        exhaust memory, so the fake refuses to pretend)."""
        if (repository, digest) in self.wire:
            raise AssertionError(f"the blob {digest[:19]} read whole into memory; it may never end")
        return self.blobs.get((repository, digest))

    def referrers(self, repository: str, digest: str) -> bytes | None:
        """Like Debian's registry (distribution 2.8): no referrers API, the tag schema is the way."""
        return None

    def tags(self, repository: str) -> list[str]:
        """GET /v2/<repository>/tags/list: every name that is not a digest."""
        return sorted(ref for repo, ref in self.manifests if repo == repository and not ref.startswith("sha256:"))

    def blob_into(self, repository: str, digest: str, out: Path, size: int | None = None) -> bool:
        """GET a blob into a file, in chunks through the real write_blob as HttpRegistry does (`wire` first)."""
        if (repository, digest) in self.wire:
            chunks: Iterable[bytes] = self.wire[(repository, digest)]()
        elif (data := self.blobs.get((repository, digest))) is not None:
            chunks = (data[at : at + CHUNK_BYTES] for at in range(0, len(data), CHUNK_BYTES))
        else:
            return False
        write_blob(chunks, digest, out, host=self.host, size=size)
        return True


@dataclass(frozen=True)
class FakeImage:
    """An image as an engine holds it: the config blob (its sha256 is the ID) and its layers' diff_ids."""

    config: bytes

    @property
    def image_id(self) -> str:
        return _sha256(self.config)

    @property
    def document(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.config)
        return parsed

    @property
    def diff_ids(self) -> list[str]:
        return list(self.document["rootfs"]["diff_ids"])

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.document.get("config", {}).get("Labels") or {})


def _absolute(name: str) -> str:
    """A path in an image as `/a/b`, whatever a tar or a caller wrote (`./a/b`, `a/b/`, `//a/b`)."""
    return posixpath.normpath("/" + name.lstrip("/"))


@dataclass
class FakeEngine(Engine):
    """dockerd in memory: images by ID, a layer store by diff_id, tags and repo digests; pulls from FakeRegistry.

    It checks what dockerd checks: `load` refuses a layer whose sha256 is not the config's diff_id, `pull` refuses
    a manifest or blob whose content is not its digest. `save` writes a docker-archive with the project's own
    writer, and `read_file` reads a path from the image's layers (upper layer wins, whiteouts delete).
    """

    images: dict[str, FakeImage] = field(default_factory=dict)  # image ID → image
    layers: dict[str, bytes] = field(default_factory=dict)  # diff_id → uncompressed layer tar
    tags: dict[str, str] = field(default_factory=dict)  # name:tag → image ID
    repo_digests: dict[str, str] = field(default_factory=dict)  # host/repository@sha256:… → image ID
    registries: dict[str, FakeRegistry] = field(default_factory=dict)  # registry host → registry
    fail_load: BaseException | None = None
    loads: int = 0
    load_sizes: list[int] = field(default_factory=list)  # per load: the size the caller said it would send
    sent_layers: list[int] = field(default_factory=list)  # per load: how many layer tars the archive carried
    # Stacks held_layers claims on top of the images' own, which load does not have (an image removed between
    # the question and the load).
    phantom_stacks: list[list[str]] = field(default_factory=list)
    pulls: list[str] = field(default_factory=list)
    save_chunk: int = 32 * 1024  # `save` streams the archive in pieces of this size

    @classmethod
    def with_registry(cls, *registries: FakeRegistry) -> FakeEngine:
        """An engine that reaches these registries (and no other)."""
        return cls(registries={registry.host: registry for registry in registries})

    def image_id(self, ref: str) -> str | None:
        if ref in self.images:
            return ref
        if ref in self.tags:
            return self.tags[ref]
        if ref in self.repo_digests:
            return self.repo_digests[ref]
        if ":" not in ref.rpartition("/")[2] and "@" not in ref and f"{ref}:latest" in self.tags:
            return self.tags[f"{ref}:latest"]
        hexits = ref.removeprefix("sha256:")
        if len(hexits) >= 4 and all(c in "0123456789abcdef" for c in hexits):  # an ID or a unique prefix of one
            found = [image_id for image_id in self.images if image_id.removeprefix("sha256:").startswith(hexits)]
            if len(found) == 1:
                return found[0]
        return None

    def _image(self, ref: str, action: str) -> FakeImage:
        image_id = self.image_id(ref)
        if image_id is None:
            raise EngineError(f"cannot {action}: No such image: {ref}", hint="see `docker info` for the engine's state")
        return self.images[image_id]

    def image_labels(self, ref: str) -> dict[str, str]:
        image_id = self.image_id(ref)
        return self.images[image_id].labels if image_id else {}

    def load(self, write: ArchiveWriter, size: int = 0) -> str:
        self.loads += 1
        self.load_sizes.append(size)
        if self.fail_load is not None:
            raise self.fail_load
        buffer = io.BytesIO()
        write(buffer)
        buffer.seek(0)
        try:  # read with the project's own reader, so the fake and the real archives cannot drift apart
            with ImageArchive(buffer, "the loaded archive") as archive:
                found = archive.image(partial=True)
                self.sent_layers.append(sum(member is not None for member in found.layers))
                blobs = [
                    self._layer(archive, found, index)
                    if member
                    else self._held(list(found.config.diff_ids[: index + 1]))
                    for index, member in enumerate(found.layers)
                ]
        except (ImageArchiveError, ValueError) as exc:
            raise EngineError(f"cannot load the image into Docker: not a docker-archive ({exc})") from exc
        image = FakeImage(found.config.data)
        self._keep(image, blobs, "load the image into Docker")
        for name in found.repo_tags:
            self.tags[name] = image.image_id
        return image.image_id

    @staticmethod
    def _layer(archive: ImageArchive, image: ArchivedImage, index: int) -> bytes:
        """A layer the archive carries, refused as dockerd refuses it when it is not its diff_id."""
        try:
            return archive.layer(image, index).read()
        except ArchiveMismatchError as exc:
            raise EngineError(f"cannot load the image into Docker: invalid diffID for layer {index}: {exc}") from exc

    def held_layers(self, diff_ids: list[str]) -> int:
        stacks = [image.diff_ids for image in self.images.values()] + self.phantom_stacks
        best = 0
        for stack in stacks:
            common = 0
            for theirs, ours in zip(stack, diff_ids, strict=False):
                if theirs != ours:
                    break
                common += 1
            best = max(best, common)
        return best

    def _held(self, chain: list[str]) -> bytes:
        """A layer left out of an archive: dockerd finds it by chain ID, or fails opening its missing tar."""
        if not any(image.diff_ids[: len(chain)] == chain for image in self.images.values()):
            member = f"{chain[-1].removeprefix('sha256:')}/layer.tar"
            raise ValueError(f"open /var/lib/docker/tmp/docker-import-1/{member}: no such file or directory")
        return self.layers[chain[-1]]

    def _keep(self, image: FakeImage, blobs: list[bytes], action: str) -> None:
        """Store an image whose layers are exactly its config's diff_ids, as dockerd insists."""
        if len(blobs) != len(image.diff_ids):
            raise EngineError(f"cannot {action}: {len(blobs)} layers for {len(image.diff_ids)} diff_ids")
        for index, (diff_id, blob) in enumerate(zip(image.diff_ids, blobs, strict=True)):
            if _sha256(blob) != diff_id:
                raise EngineError(
                    f"cannot {action}: invalid diffID for layer {index}: expected {diff_id!r}, got {_sha256(blob)!r}"
                )
        for diff_id, blob in zip(image.diff_ids, blobs, strict=True):
            self.layers[diff_id] = blob
        self.images[image.image_id] = image

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        found = self._image(image_id, f"tag {repository}:{tag}")
        self.tags[f"{repository}:{tag}"] = found.image_id

    def envlock_images(self) -> list[ImageInfo]:
        return [
            ImageInfo(
                image_id,
                tuple(sorted(name for name, target in self.tags.items() if target == image_id)),
                image.labels,
                tuple(image.diff_ids),
                sum(len(self.layers.get(d, b"")) for d in image.diff_ids),
            )
            for image_id, image in sorted(self.images.items())
            if "dev.envlock.lock-hash" in image.labels
        ]

    def remove(self, ref: str) -> None:
        # As `docker rmi --force`: a name drops that name (and the image with its last name); an ID drops it all.
        if ref in self.tags or ref in self.repo_digests:
            image_id = self.tags.pop(ref, None) or self.repo_digests.pop(ref)
            if image_id in self.tags.values() or image_id in self.repo_digests.values():
                return
        else:
            found = self.image_id(ref)
            if found is None:
                return
            image_id = found
        self.images.pop(image_id, None)
        self.tags = {name: target for name, target in self.tags.items() if target != image_id}
        self.repo_digests = {name: target for name, target in self.repo_digests.items() if target != image_id}

    def pull(self, ref: str) -> str:
        self.pulls.append(ref)
        name, _, digest = ref.partition("@")
        tag = ""
        if not digest:
            name, _, tag = name.rpartition(":") if ":" in name.rpartition("/")[2] else (name, ":", "latest")
        host, _, repository = name.partition("/")
        registry = self.registries.get(host)
        hint = "is the registry reachable? an image can also be loaded with `docker load` first"
        if registry is None:
            raise EngineError(f"cannot pull {ref}: dial tcp: lookup {host}: no such host", hint=hint)
        manifest = registry.manifest(repository, digest or tag)
        if manifest is None:
            raise EngineError(f"cannot pull {ref}: manifest for {ref} not found: manifest unknown", hint=hint)
        if digest and _sha256(manifest) != digest:
            raise EngineError(f"cannot pull {ref}: manifest verification failed for digest {digest}", hint=hint)
        document = json.loads(manifest)
        blobs: list[bytes] = []
        for descriptor in [document["config"], *document["layers"]]:
            data = registry.blob(repository, descriptor["digest"])
            if data is None or _sha256(data) != descriptor["digest"]:
                raise EngineError(f"cannot pull {ref}: blob {descriptor['digest'][:19]} unknown or corrupt", hint=hint)
            if descriptor is not document["config"] and descriptor.get("mediaType") != OCI_LAYER:
                raise EngineError(f"cannot pull {ref}: the fake engine reads only uncompressed layers")
            blobs.append(data)
        image = FakeImage(blobs[0])
        self._keep(image, blobs[1:], f"pull {ref}")
        self.repo_digests[f"{name}@{_sha256(manifest)}"] = image.image_id
        if tag:
            self.tags[f"{name}:{tag}"] = image.image_id
        return image.image_id

    def read_file(self, ref: str, path: str) -> bytes:
        image = self._image(ref, f"read {path} from {ref}")
        wanted = _absolute(path)
        content: bytes | None = None
        for diff_id in image.diff_ids:
            with tarfile.open(fileobj=io.BytesIO(self.layers[diff_id])) as layer:
                for member in layer.getmembers():
                    name = _absolute(member.name)
                    base = posixpath.basename(name)
                    if base.startswith(".wh."):  # a whiteout: the lower layers' entry is deleted
                        gone = posixpath.join(posixpath.dirname(name), base.removeprefix(".wh."))
                        if wanted == gone or wanted.startswith(gone + "/"):
                            content = None
                    elif name == wanted:
                        handle = layer.extractfile(member) if member.isreg() else None
                        content = handle.read() if handle else b""
        if content is None:
            raise EngineError(f"cannot read {path} from {ref}: Could not find the file {path} in container")
        return content

    def save(self, ref: str, sink: Sink) -> None:
        image = self._image(ref, f"export {ref}")
        with tempfile.TemporaryDirectory(prefix="fake-engine-") as tmp:
            parts = []
            for index, diff_id in enumerate(image.diff_ids):
                tar = Path(tmp) / f"{index}.tar"
                tar.write_bytes(self.layers[diff_id])
                parts.append((diff_id, tar))
            buffer = io.BytesIO()
            write_archive(buffer, image.config, parts)
            data = buffer.getvalue()
            for at in range(0, len(data), self.save_chunk):  # in pieces, as the engine streams it
                sink.write(data[at : at + self.save_chunk])


# --- Running ---------------------------------------------------------------------------------------------------


@dataclass
class FakeLauncher(Launcher):
    """Runs nothing: writes the outputs a command would, says something on both streams, returns a code."""

    code: int = 0
    writes: dict[str, bytes] = field(default_factory=dict)
    interrupt: bool = False
    launched: list[LaunchSpec] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reads: tuple[str, ...] = ()  # files the command reads: what it found is kept in `seen`, one dict per launch
    seen: list[dict[str, bytes | None]] = field(default_factory=list)
    # By the command's last word (e.g. "train.py"): what it writes, computed from the files it reads as mounted.
    scripts: dict[str, Callable[[Callable[[str], bytes | None]], dict[str, bytes]]] = field(default_factory=dict)
    runtime_name: str = "docker"  # what the record names as the runtime

    def run(self, spec: LaunchSpec, output: StreamSink) -> int:
        self.launched.append(spec)
        self.seen.append({name: _read_as_mounted(spec, name) for name in self.reads})
        output("stdout", b"training...\n")
        output("stderr", b"a warning\n")
        if self.interrupt:
            raise KeyboardInterrupt
        for name, data in self.writes.items():
            (spec.project_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (spec.project_dir / name).write_bytes(data)
        script = self.scripts.get(spec.command[-1]) if spec.command else None
        for name, data in script(lambda name: _read_as_mounted(spec, name)).items() if script else ():
            (spec.project_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (spec.project_dir / name).write_bytes(data)
        return self.code

    def remove(self, name: str) -> None:
        self.removed.append(name)

    def runtime(self) -> RuntimeInfo:
        return RuntimeInfo(self.runtime_name, "24.0.fake")


def _read_as_mounted(spec: LaunchSpec, name: str) -> bytes | None:
    """A file as the container would see it at /work/NAME: a read-only mount over the project, else the project."""
    for host, inside in spec.read_only:
        prefix = inside.removeprefix("/work/")
        if name == prefix or name.startswith(prefix + "/"):
            path = host / name[len(prefix) :].lstrip("/") if name != prefix else host
            return path.read_bytes() if path.is_file() else None
    path = spec.project_dir / name
    return path.read_bytes() if path.is_file() else None


@dataclass
class FakeTracker(Tracker):
    """Remembers what envlock asked of MLflow."""

    target: TrackingTarget = field(default_factory=lambda: TrackingTarget("http://127.0.0.1:5000", host_network=True))
    started: list[tuple[str, str, str | None, dict[str, str]]] = field(default_factory=list)
    finished: list[tuple[str, str]] = field(default_factory=list)
    fail_start: bool = False
    unreachable: bool = False
    checked: int = 0

    def check(self) -> None:
        self.checked += 1
        if self.unreachable:
            raise TrackingError("MLflow at http://127.0.0.1:5000 is unreachable: Connection refused")

    def start(self, experiment: str, run_name: str, reuse: str | None, tags: Mapping[str, str]) -> TrackedRun:
        if self.fail_start:
            raise TrackingError("MLflow at http://127.0.0.1:5000 is unreachable: create a run: connection refused")
        self.started.append((experiment, run_name, reuse, dict(tags)))
        return TrackedRun(self.target, reuse or "r" * 32, "7")

    def finish(self, run: TrackedRun, status: str) -> None:
        self.finished.append((run.run_id, status))


@dataclass
class FakeSlurm:
    """Answers sbatch / scontrol / scancel like Slurm 22.05 does; `fail` maps a program to its stderr."""

    states: dict[str, str] = field(default_factory=dict)  # job id → scontrol's one-line answer
    fail: dict[str, str] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)
    next_id: int = 41

    def __call__(self, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        args = list(command)
        self.calls.append(args)
        key = " ".join(args[:2]) if args[0] == "scontrol" else args[0]
        code, out, err = 0, "", ""
        if key in self.fail:
            code, err = 1, self.fail[key]
        elif args[0] == "sbatch":
            self.next_id += 1
            out = f"{self.next_id};envlock\n"
        elif args[:3] == ["scontrol", "show", "hostnames"]:
            prefix, _, ranged = args[3].partition("[")
            first, _, last = ranged.rstrip("]").partition("-")
            names = [f"{prefix}{n:0{len(first)}d}" for n in range(int(first), int(last) + 1)] if ranged else [prefix]
            out = "\n".join(names) + "\n"
        elif args[:3] == ["scontrol", "show", "node"]:
            out = f"NodeName={args[-1]} NodeAddr=10.0.0.{args[-1][-1]} State=IDLE\n"
        elif args[:3] == ["scontrol", "show", "job"] and args[-1] not in self.states:
            code, err = 1, "slurm_load_jobs error: Invalid job id specified\n"
        elif args[:3] == ["scontrol", "show", "job"]:
            out = self.states[args[-1]]
        return subprocess.CompletedProcess(args, code, out, err)


# --- The host: NVML --------------------------------------------------------------------------------------------

GIB = 1024**3


@dataclass
class FakeGpu:
    """One GPU as the fake NVML reports it; mig/ecc None: not supported (consumer cards)."""

    name: str
    capability: tuple[int, int]
    memory_bytes: int = 24 * GIB
    mig: bool | None = None
    ecc: bool | None = None
    uuid: str = ""


@dataclass
class FakeNvml(Nvml):
    """NVML answering from fields; `unavailable` makes init fail the way a host without a driver does."""

    driver: str = "550.54.15"
    cuda: int = 12040
    gpus: list[FakeGpu] = field(default_factory=list)
    unavailable: str | None = None
    broken_gpu: int | None = None  # reading this GPU fails, as a GPU that fell off the bus does
    calls: list[str] = field(default_factory=list)

    def init(self) -> None:
        self.calls.append("init")
        if self.unavailable is not None:
            raise NvmlUnavailableError(self.unavailable)

    def shutdown(self) -> None:
        self.calls.append("shutdown")

    def driver_version(self) -> str:
        return self.driver

    def cuda_driver_version(self) -> int:
        return self.cuda

    def device_count(self) -> int:
        return len(self.gpus)

    def _gpu(self, index: int) -> FakeGpu:
        if index == self.broken_gpu:
            raise HostProbeError(f"cannot read GPU {index} from NVML: GPU is lost")
        return self.gpus[index]

    def name(self, index: int) -> str:
        return self._gpu(index).name

    def uuid(self, index: int) -> str:
        return self._gpu(index).uuid or f"GPU-{index:08d}-0000-0000-0000-000000000000"

    def memory_total(self, index: int) -> int:
        return self._gpu(index).memory_bytes

    def compute_capability(self, index: int) -> tuple[int, int]:
        return self._gpu(index).capability

    def mig_mode(self, index: int) -> bool | None:
        return self._gpu(index).mig

    def ecc_mode(self, index: int) -> bool | None:
        return self._gpu(index).ecc


@dataclass
class _MemoryInfo:
    total: int


class FakePynvml:
    """A stand-in for the pynvml module under PynvmlAdapter: its error classes and constants, answers from fields.

    Not checked against a Protocol: pynvml ships no types, and the adapter takes the module as `Any`.
    """

    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLError_FunctionNotFound = pynvml.NVMLError_FunctionNotFound
    NVML_DEVICE_MIG_ENABLE = pynvml.NVML_DEVICE_MIG_ENABLE
    NVML_FEATURE_ENABLED = pynvml.NVML_FEATURE_ENABLED

    def __init__(self, init_error: int | None = None, mig_error: int | None = None) -> None:
        self.init_error = init_error
        self.mig_error = mig_error
        self.shut_down = False

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"535.104.05"  # nvidia-ml-py before 11.515 returned bytes

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return 12020

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        if index != 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return "handle-0"

    def nvmlDeviceGetName(self, handle: str) -> str:
        return "NVIDIA GeForce RTX 3090"

    def nvmlDeviceGetUUID(self, handle: str) -> str:
        return "GPU-3090"

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> _MemoryInfo:
        return _MemoryInfo(total=24 * GIB)

    def nvmlDeviceGetCudaComputeCapability(self, handle: str) -> tuple[int, int]:
        return (8, 6)

    def nvmlDeviceGetMigMode(self, handle: str) -> list[int]:
        if self.mig_error is not None:
            raise pynvml.NVMLError(self.mig_error)
        return [pynvml.NVML_DEVICE_MIG_DISABLE, pynvml.NVML_DEVICE_MIG_DISABLE]

    def nvmlDeviceGetEccMode(self, handle: str) -> list[int]:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


RTX_4090 = FakeGpu("NVIDIA GeForce RTX 4090", (8, 9), memory_bytes=24 * GIB)
A100 = FakeGpu("NVIDIA A100-SXM4-80GB", (8, 0), memory_bytes=80 * GIB, mig=False, ecc=True)


def gpu_host(driver: str = "550.54.15", *gpus: FakeGpu, cuda: int = 12040) -> HostState:
    """A GPU host as probe_host reports it through the fake."""
    return probe_host(FakeNvml(driver=driver, cuda=cuda, gpus=list(gpus)), lambda: "27.3.1", lambda: "AMD EPYC 7763")


def cpu_host() -> HostState:
    """A host without an NVIDIA driver."""
    nvml = FakeNvml(unavailable="NVML shared library not found (no NVIDIA driver installed)")
    return probe_host(nvml, lambda: "27.3.1", lambda: "AMD EPYC 7763")


# --- Building: a locked project with real (tiny) wheels, and the stores a build uses ------------------------------


def project_with_wheels(
    tmp_path: Path,
    write_project: Callable[[str], Path],
    names: list[str],
    version: str = "1.0",
    padding: Mapping[str, int] | None = None,
) -> tuple[Spec, dict[str, bytes]]:
    """A project depending on `names`, locked against tiny wheels (a name in `padding` gets that many bytes more:
    the light layers are grouped by wheel size); returns its spec and the wheels by URL."""
    wheels_dir = tmp_path / "wheels"
    wheels_dir.mkdir(parents=True, exist_ok=True)
    served = {}
    packages = []
    for name in names:
        built = build_wheel(wheels_dir, name, version, padding=(padding or {}).get(name, 0))
        data = built.read_bytes()
        url = f"https://files.example/{built.name}"
        served[url] = data
        file = LockedFile(built.name, url, hashlib.sha256(data).hexdigest(), len(data))
        packages.append(LockedPackage(name, version, (file,)))
    project = write_project(f'[project]\nname = "demo"\ndependencies = {names!r}\n'.replace("'", '"'))
    spec = load_spec(project)
    lock_project(spec, FakeResolver({"linux/amd64": packages}))
    return spec, served


def stores(root: Path, served: dict[str, bytes]) -> tuple[WheelCache, LayerStore, BaseStore, FakeBaseBuilder]:
    """A wheel cache serving `served` through FakeFetcher, a layer store and a base store under root."""
    builder = FakeBaseBuilder()
    return (
        WheelCache(root / "wheels", FakeFetcher(served)),
        LayerStore(root / "layers"),
        BaseStore(root / "bases", builder),
        builder,
    )


# Callables are checked by assignment: a FakeSlurm must stay a Slurm `Command`.
_slurm_command: Command = FakeSlurm()


class FakeMetadataSource:
    """A build backend that answers from a table (by directory name) and counts what it was asked."""

    def __init__(self, answers: Mapping[str, BackendMetadata]) -> None:
        self.answers = dict(answers)
        self.asked: list[Path] = []
        self.versions: dict[str, str] = {}  # directory name → the version of "the commit checked out now"
        self.versions_asked: list[Path] = []

    def metadata(self, directory: Path) -> BackendMetadata:
        """The answer for this directory's name."""
        self.asked.append(directory)
        return self.answers[directory.name]

    def version(self, directory: Path) -> str:
        """The version set for this directory's name (else the metadata's)."""
        self.versions_asked.append(directory)
        return self.versions.get(directory.name) or self.answers[directory.name].version


_: type[MetadataSource] = FakeMetadataSource


class FakeDockerContainers:
    """docker-py's `client.containers`, as far as the bytecode compile uses it: names already taken are refused
    (409 Conflict), as the engine does while a container of that name runs; a started one runs until killed."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.started: list[str] = []
        self.killed: list[str] = []
        self.ended: list[str] = []
        self.made: list[FakeDockerContainer] = []

    def running(self, name: str) -> bool:
        """Started and neither killed nor ended."""
        return name in self.started and name not in self.killed and name not in self.ended

    def end(self, name: str) -> None:
        """The container's command ended (auto-removed: its name is free again)."""
        self.ended.append(name)

    def create(self, image: str, command: list[str], **options: Any) -> FakeDockerContainer:
        """Record the request; a taken name is the engine's Conflict."""
        import docker.errors  # noqa: PLC0415

        if any(c.name == options.get("name") for c in self.made if c.name not in (*self.killed, *self.ended)):
            raise docker.errors.APIError("Conflict", response=_Conflict())
        self.created.append({"image": image, "command": command, **options})
        name = str(options.get("name"))
        container = FakeDockerContainer(self, name, {"Names": [f"/{name}"], "Labels": options.get("labels") or {}})
        self.made.append(container)
        return container

    def list(self, filters: dict[str, Any] | None = None, *, sparse: bool = False) -> list[FakeDockerContainer]:
        """The running containers (started, not killed) that carry the filter's label."""
        label = (filters or {}).get("label")
        return [c for c in self.made if self.running(c.name) and (label is None or label in c.attrs["Labels"])]


class _Conflict:
    status_code = 409
    reason = "Conflict"
    url = "http://docker/containers/create"


@dataclass
class FakeDockerContainer:
    """A created container: start() and kill() are recorded."""

    containers: FakeDockerContainers
    name: str
    attrs: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        """Recorded, nothing run."""
        self.containers.started.append(self.name)

    def kill(self) -> None:
        """Recorded: it stops running (and, auto-removed, its name is free again)."""
        self.containers.killed.append(self.name)

    def remove(self, force: bool = False) -> None:
        """Recorded as killed: gone."""
        self.containers.killed.append(self.name)


class FakeDockerApi:
    """docker-py's low-level `client.api`, as far as seeding a bytecode folder asks it: an image's config."""

    def __init__(self) -> None:
        self.images: dict[str, dict[str, Any]] = {}
        self.inspected: list[str] = []

    def add_image(self, image_id: str, diff_ids: list[str], base: list[str]) -> None:
        """An image of these layers whose `dev.envlock.base` label names `base`."""
        labels = {"dev.envlock.base": ",".join(base)} if base else {}
        self.images[image_id] = {"Id": image_id, "RootFS": {"Layers": diff_ids}, "Config": {"Labels": labels}}

    def inspect_image(self, image: str) -> dict[str, Any]:
        """The image's attributes; an unknown one is the engine's 404."""
        import docker.errors  # noqa: PLC0415

        self.inspected.append(image)
        if image not in self.images:
            raise docker.errors.ImageNotFound(f"No such image: {image}")
        return self.images[image]


class FakeDockerClient:
    """The part of a docker-py client DockerLauncher.compile_bytecode talks to."""

    def __init__(self) -> None:
        self.containers = FakeDockerContainers()
        self.api = FakeDockerApi()
