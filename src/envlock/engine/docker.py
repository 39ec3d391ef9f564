"""The container engine behind a small Protocol; the real one is Docker through docker-py."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

from envlock.engine.runtimes import LOCK_HASH_LABEL
from envlock.errors import EngineError, EngineTimeoutError, EngineUnreachableError

ArchiveWriter = Callable[[BinaryIO], object]


class Sink(Protocol):
    """Where an engine writes an exported archive: a file, or anything else that takes bytes."""

    def write(self, data: bytes, /) -> object:
        """Take the next bytes."""
        ...


API_VERSION = "1.41"


@dataclass(frozen=True)
class ImageInfo:
    """A local image as `envlock gc` sees it."""

    image_id: str
    tags: tuple[str, ...]
    labels: dict[str, str]
    diff_ids: tuple[str, ...]
    size: int


class ImageLister(Protocol):
    """The part of an engine `envlock gc` needs: list envlock's images, remove one."""

    def envlock_images(self) -> list[ImageInfo]:
        """Every local image with a `dev.envlock.lock-hash` label."""
        ...

    def remove(self, ref: str) -> None:
        """Remove a local image (or tag); absent is fine."""
        ...


class Engine(Protocol):
    """What envlock needs from a container engine."""

    def image_id(self, ref: str) -> str | None:
        """The ID of a local image by name:tag or ID, or None when absent."""
        ...

    def image_labels(self, ref: str) -> dict[str, str]:
        """The labels of a local image."""
        ...

    def load(self, write: ArchiveWriter, size: int = 0) -> str:
        """Load the docker-archive that `write` streams (about `size` bytes); returns the loaded image's ID."""
        ...

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        """Point repository:tag at an image."""
        ...

    def remove(self, ref: str) -> None:
        """Remove a local image (or tag); absent is fine."""
        ...

    def pull(self, ref: str) -> str:
        """Pull an image (by digest: `repo@sha256:…`); returns its ID."""
        ...

    def read_file(self, ref: str, path: str) -> bytes:
        """One file from a local image, without running it."""
        ...

    def save(self, ref: str, sink: Sink) -> None:
        """Write a local image as a docker-archive tarball into sink, as the engine streams it."""
        ...

    def envlock_images(self) -> list[ImageInfo]:
        """Every local image with a `dev.envlock.lock-hash` label (what `envlock gc` may remove)."""
        ...


@runtime_checkable
class LayerHolder(Protocol):
    """An engine that can say which layers it holds, so a load can leave those out of the archive."""

    def held_layers(self, diff_ids: list[str]) -> int:
        """How many leading layers of this stack (base first) the engine holds, by chain, as far as it knows."""
        ...


# docker-py's own read timeout; a load waits longer, by its size (see load_timeout).
DEFAULT_TIMEOUT_S = 60
# The slowest rate an engine unpacks a loaded archive at (overlayfs on a slow disk), for sizing a load's wait.
SLOWEST_UNPACK_BYTES_PER_S = 20_000_000


def load_timeout(size: int) -> float:
    """How long to wait for the engine's answer to a load of `size` bytes: it unpacks them all before answering."""
    return DEFAULT_TIMEOUT_S + size / SLOWEST_UNPACK_BYTES_PER_S


@contextmanager
def translated(action: str, timeout: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    import docker.errors  # noqa: PLC0415
    import requests  # noqa: PLC0415

    try:
        yield
    except requests.Timeout as exc:
        raise EngineTimeoutError(f"cannot {action}: the Docker engine did not answer within {timeout:.0f} s") from exc
    except docker.errors.DockerException as exc:
        if "Connection" in str(exc) or "FileNotFoundError" in str(exc):
            raise EngineUnreachableError(f"cannot {action}: the Docker engine is not reachable") from exc
        if "is too new" in str(exc):
            raise EngineError(
                f"cannot {action}: the Docker engine is older than 20.10 (API {API_VERSION})",
                hint="upgrade Docker, or set DOCKER_API_VERSION=auto",
            ) from exc
        raise EngineError(
            f"cannot {action}: {_first_line(exc)}", hint="see `docker info` for the engine's state"
        ) from exc
    except requests.RequestException as exc:
        if "Permission denied" in str(exc) or "PermissionError" in str(exc):
            raise EngineUnreachableError(
                f"cannot {action}: permission denied on the Docker engine's socket ({_engine_address()})",
                hint="join the group that owns the socket (usually `docker`: `sudo usermod -aG docker $USER`, then "
                "log in again), or point DOCKER_HOST at an engine you may use",
            ) from exc
        raise EngineUnreachableError(
            f"cannot {action}: the Docker engine is not reachable ({exc.__class__.__name__})"
        ) from exc


def _engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]


def save_file(engine: Engine, ref: str, out: Path) -> None:
    """`engine.save` into a file (made before the engine answers; whoever chose the path removes it on failure)."""
    with out.open("wb") as handle:
        engine.save(ref, handle)


class DockerEngine:
    """Engine through docker-py (DOCKER_HOST or the default socket)."""

    def __init__(self, client: Any | None = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        """The docker-py client, connected on first use."""
        if self._client is None:
            import docker  # noqa: PLC0415  (slow to import; only commands that touch the engine need it)

            with translated("connect to Docker"):
                # A fixed API version, not "auto": negotiating costs a /version round trip at every start.
                # 1.41 is Docker 20.10's, accepted by every newer engine; DOCKER_API_VERSION overrides it, as it
                # does for the Docker CLI ("auto" negotiates).
                self._client = docker.from_env(version=os.environ.get("DOCKER_API_VERSION") or API_VERSION)
        return self._client

    def _attrs(self, ref: str) -> dict[str, Any] | None:
        import docker.errors  # noqa: PLC0415

        with translated(f"inspect {ref}"):
            try:
                attrs: dict[str, Any] = self.client.api.inspect_image(ref)
            except docker.errors.ImageNotFound:
                return None
        return attrs

    def image_id(self, ref: str) -> str | None:
        """ID of a local image, or None."""
        attrs = self._attrs(ref)
        return str(attrs["Id"]) if attrs else None

    def image_labels(self, ref: str) -> dict[str, str]:
        """Labels of a local image."""
        attrs = self._attrs(ref)
        return dict((attrs or {}).get("Config", {}).get("Labels") or {})

    def load(self, write: ArchiveWriter, size: int = 0) -> str:
        """`docker load` through the API, fed through a pipe: the archive (GBs for CUDA stacks) never hits disk."""
        client = self.client  # connect first: an unreachable engine fails here, before any producer exists
        read_fd, write_fd = os.pipe()
        failure: list[BaseException] = []

        def produce() -> None:
            try:
                with os.fdopen(write_fd, "wb") as sink:
                    write(sink)
            except BrokenPipeError:
                return  # the engine stopped reading: its own error is the one to report
            except BaseException as exc:  # noqa: BLE001  (re-raised in the caller's thread below)
                failure.append(exc)

        producer = threading.Thread(target=produce, name="envlock-archive", daemon=True)
        producer.start()
        try:
            with os.fdopen(read_fd, "rb") as source:
                chunks = iter(lambda: source.read(1 << 20), b"")  # a generator: requests sends it chunked
                timeout = load_timeout(size)
                # docker-py reads its timeout per request from the client: widened for this load only.
                before, client.api.timeout = client.api.timeout, timeout
                try:
                    with translated("load the image into Docker", timeout):
                        images = client.images.load(chunks)
                finally:
                    client.api.timeout = before
        except EngineError as exc:
            producer.join()
            if failure:  # the producer gave up (e.g. a layer failed its digest): that is the cause to report
                raise failure[0] from exc
            raise
        finally:
            # The read end is closed by now, so a producer blocked on a full pipe gets EPIPE and ends: joining
            # while the read end is still open waits forever when the engine failed before reading it all.
            producer.join()
        if failure:
            raise failure[0]
        if not images:
            raise EngineError("Docker loaded no image from the archive")
        return str(images[0].id)

    def held_layers(self, diff_ids: list[str]) -> int:
        """The longest prefix of this stack that an image of envlock's (or a base it loaded) is made of.

        Candidates are found by their `dev.envlock.base` label, which names the base layers; their layers are
        then read from the engine itself, so a copied label gains nothing. A layer shared with an image of
        anyone else's is not seen: it is sent, and dockerd skips it after unpacking.
        """
        with translated("list the engine's images"):
            summaries = self.client.api.images(filters={"label": "dev.envlock.base"})
            best = 0
            for summary in summaries:
                base = ((summary.get("Labels") or {}).get("dev.envlock.base") or "").split(",")
                if base != diff_ids[: len(base)]:
                    continue
                import docker.errors  # noqa: PLC0415

                try:
                    layers = self.client.api.inspect_image(summary["Id"])["RootFS"]["Layers"]
                except (docker.errors.NotFound, KeyError, TypeError):
                    continue
                common = 0
                for theirs, ours in zip(layers, diff_ids, strict=False):
                    if theirs != ours:
                        break
                    common += 1
                best = max(best, common)
                if best == len(diff_ids):
                    break
        return best

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        """Tag an image."""
        with translated(f"tag {repository}:{tag}"):
            self.client.api.tag(image_id, repository, tag)

    def pull(self, ref: str) -> str:
        """`docker pull` through the API; the engine verifies the content against the digest."""
        import docker.errors  # noqa: PLC0415

        with translated(f"pull {ref}"):
            try:
                image = self.client.images.pull(ref)
            except docker.errors.APIError as exc:
                raise EngineError(
                    f"cannot pull {ref}: {_first_line(exc)}",
                    hint="is the registry reachable? an image can also be loaded with `docker load` first",
                ) from exc
        return str(image.id)

    def read_file(self, ref: str, path: str) -> bytes:
        """Create a container (never started), copy the file out of it, remove it."""
        import io  # noqa: PLC0415
        import tarfile  # noqa: PLC0415

        with translated(f"read {path} from {ref}"):
            container = self.client.containers.create(ref, ["true"])
            try:
                chunks, _ = container.get_archive(path)
                with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
                    member = archive.extractfile(archive.getmembers()[0])
                    return member.read() if member else b""
            finally:
                container.remove(force=True)

    def save(self, ref: str, sink: Sink) -> None:
        """`docker save` through the API, streamed into sink."""
        with translated(f"export {ref}"):
            for chunk in self.client.images.get(ref).save(named=False):
                sink.write(chunk)

    def envlock_images(self) -> list[ImageInfo]:
        """Every local image built by envlock (it carries `dev.envlock.lock-hash`)."""
        with translated("list images"):
            found = self.client.api.images(filters={"label": LOCK_HASH_LABEL})
            out = []
            for summary in found:
                attrs = self.client.api.inspect_image(summary["Id"])
                out.append(
                    ImageInfo(
                        str(attrs["Id"]),
                        tuple(t for t in attrs.get("RepoTags") or [] if t != "<none>:<none>"),
                        dict(attrs.get("Config", {}).get("Labels") or {}),
                        tuple(attrs.get("RootFS", {}).get("Layers") or []),
                        int(attrs.get("Size") or 0),
                    )
                )
        return out

    def remove(self, ref: str) -> None:
        """Remove an image or tag if present."""
        import docker.errors  # noqa: PLC0415

        with translated(f"remove {ref}"):
            try:
                self.client.api.remove_image(ref, force=True)
            except docker.errors.ImageNotFound:
                return
