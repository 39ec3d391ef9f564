"""Charliecloud: unprivileged `ch-run` from an image directory that envlock unpacks, verified, from the image.

The directory is keyed by image ID under the user's cache (`charliecloud/<hex>/rootfs`), made once per node:
unpacked into a temporary directory beside it and renamed into place, so a present directory is a complete one.
Its source: the registry by digest (blobs fetched by envlock itself: no engine on the node) or, for an image never
pushed, a verified export of the Docker engine's copy.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from envlock.engine.archive import CHUNK, ImageArchive, VerifiedStream, mismatch, verified_config
from envlock.engine.launch import WORKDIR, LaunchSpec
from envlock.engine.runtimes import (
    Command,
    Export,
    LayerFile,
    RuntimeInfo,
    Stream,
    StreamSink,
    first_line,
    run_tool,
    stream_command,
    string_labels,
)
from envlock.errors import BundleError, EngineError, ImageArchiveError
from envlock.fsutil import mark_used, published_folder, read_json
from envlock.safetar import extract_rootfs_layer

# (pushed `host/repo@sha256:…`, image ID, folder) → the config and the layers fetched into the folder, each blob
# checked against its digest (image.registry.fetch_pushed, through the composition root).
Fetch = Callable[[str, str, Path], tuple[bytes, Sequence[LayerFile]]]

# ch-run binds read-write only (`--bind=SRC[:DST]`, no read-only form in 0.31 nor since). So each read-only source
# is first bound onto itself and remounted read-only in a user and mount namespace of envlock's own (util-linux
# `unshare`: no privilege beyond the user namespaces ch-run needs anyway); ch-run's binds of it carry the flag, and
# in ch-run's own, less privileged namespace the kernel locks it: nothing in the container can make it writable.
# The namespace's root is the invoking user, so ch-run is told the run's uid and gid.
READ_ONLY_BINDS = (
    'while [ "$1" != -- ]; do mount --bind -- "$1" "$1" && mount -o remount,bind,ro -- "$1" '
    '|| { echo "envlock: cannot make $1 read-only for the run" >&2; exit 125; }; shift; done; shift; exec "$@"'
)


def _hex(image_id: str) -> str:
    hex_id = image_id.removeprefix("sha256:")
    if len(hex_id) != 64 or any(c not in "0123456789abcdef" for c in hex_id):
        raise EngineError(f"{image_id!r} is not an image ID (sha256:<64 hex>)")
    return hex_id


def unpack_archive(archive_path: Path, image_id: str, rootfs: Path) -> dict[str, Any]:
    """Unpack a docker-archive's layers in order into `rootfs` (whiteouts respected), the config checked against the
    image ID and every layer against its diff_id before a byte of it is written. Returns the image config."""
    source = f"the export of {image_id[:19]}"
    with ImageArchive(archive_path, source) as archive:
        image = archive.image(image_id)
        for index, name in enumerate(image.names):
            archive.layer(image, index).drain()
            _extract(archive.layer(image, index), rootfs, f"layer {name} of {image_id[:19]}", image_id)
    return image.config.document


def _extract(layer: VerifiedStream, rootfs: Path, source: str, image_id: str) -> None:
    """One verified layer onto the rootfs, by envlock's own reader: symlinks are members, but nothing is written
    through one (safetar)."""
    try:
        extract_rootfs_layer(layer, rootfs, source=source)
    except BundleError as exc:
        raise EngineError(f"cannot unpack {image_id[:19]} for Charliecloud: {exc.message}") from exc
    except (OSError, EOFError) as exc:
        raise EngineError(f"cannot unpack {image_id[:19]} for Charliecloud: {exc!r}") from exc


def _layer_reader(layer: LayerFile) -> IO[bytes]:
    handle: IO[bytes] = layer.path.open("rb")
    return gzip.GzipFile(fileobj=handle, mode="rb") if layer.compression == "gzip" else handle  # type: ignore[return-value]


def _fetched(layer: LayerFile, what: str, source: str) -> VerifiedStream:
    """A fetched layer's uncompressed bytes, verified against its diff_id as they are read."""

    def chunks() -> Iterator[bytes]:
        with _layer_reader(layer) as handle:
            yield from iter(lambda: handle.read(CHUNK), b"")

    return VerifiedStream(chunks(), layer.diff_id, what=what, source=source)


def unpack_layers(config_bytes: bytes, layers: Sequence[LayerFile], image_id: str, rootfs: Path) -> dict[str, Any]:
    """Unpack fetched layers in order into `rootfs`, checking the config's sha256 against the image ID and each
    layer's uncompressed sha256 against its diff_id in the config before a byte of it is written. Returns the config."""
    source = f"the fetched image {image_id[:19]}"
    config = verified_config(config_bytes, source, image_id=image_id)
    if len(config.diff_ids) != len(layers):
        raise ImageArchiveError(f"{source} lists {len(layers)} layers for {len(config.diff_ids)} diff_ids")
    for index, (diff_id, layer) in enumerate(zip(config.diff_ids, layers, strict=True)):
        what = str(index)
        if layer.diff_id != diff_id:
            raise mismatch(source, what, diff_id)
        try:
            _fetched(layer, what, source).drain()
            _extract(_fetched(layer, what, source), rootfs, f"layer {index} of {image_id[:19]}", image_id)
        except (OSError, EOFError) as exc:
            raise EngineError(f"cannot unpack {image_id[:19]} for Charliecloud: {exc!r}") from exc
        layer.path.unlink()  # one layer's file at a time: the node's disk holds the rootfs, not a second copy
    return config.document


class CharliecloudLauncher:
    """Launcher through `ch-run`, from an image directory prepared once per image ID."""

    name = "charliecloud"

    def __init__(
        self,
        store: Path,
        export: Export,
        *,
        fetch: Fetch | None = None,
        command: Command = run_tool,
        stream: Stream = stream_command,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.store = store
        self.export = export
        self.fetch = fetch
        self.command = command
        self.stream = stream
        self.environ = environ

    def directory(self, image_id: str) -> Path:
        """Where an image's directory (rootfs/ and config.json) is kept."""
        return self.store / _hex(image_id)

    def has_image(self, image_id: str) -> bool:
        """True when the image's directory is here (a present directory is a complete, verified one)."""
        return (self.directory(image_id) / "rootfs").is_dir()

    def labels(self, image_id: str) -> dict[str, str]:
        """The image's labels, from the config kept beside its rootfs (checked against the image ID when made)."""
        config = read_json(self.directory(image_id) / "config.json")
        return string_labels(config.get("config", {}).get("Labels") if isinstance(config, dict) else None)

    def prepare(self, image_id: str) -> Path:
        """The image's directory, unpacked from a verified export of the image when it is not here yet."""

        def from_export(scratch: Path, rootfs: Path) -> dict[str, Any]:
            archive = scratch / "image.tar"
            self.export(image_id, archive)
            config = unpack_archive(archive, image_id, rootfs)
            archive.unlink()
            return config

        return self._made(image_id, from_export)

    def pull(self, image_id: str, pushed: str) -> None:
        """The image's directory, from the registry by digest: manifest, config and layers fetched by envlock and
        each checked (blobs against their digests, the config against the image ID, layers against diff_ids)."""
        fetch = self.fetch
        if fetch is None:
            raise EngineError("Charliecloud was given no registry client: cannot fetch images by digest")

        def from_registry(scratch: Path, rootfs: Path) -> dict[str, Any]:
            config, layers = fetch(pushed, image_id, scratch)
            return unpack_layers(config, layers, image_id, rootfs)

        self._made(image_id, from_registry)

    def _made(self, image_id: str, fill: Callable[[Path, Path], dict[str, Any]]) -> Path:
        """The image's directory, filled (scratch folder, rootfs) → config in a folder beside it and renamed into
        place when it is not here yet."""
        final = self.directory(image_id)
        if self.has_image(image_id):
            mark_used(final)
            return final
        # Another node's task may make it meanwhile: theirs is used when complete.
        with published_folder(
            final, prefix=f".{final.name[:12]}-", complete=lambda made: (made / "rootfs").is_dir()
        ) as scratch:
            rootfs = scratch / "rootfs"
            rootfs.mkdir()
            config = fill(scratch, rootfs)
            (rootfs / WORKDIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
            (scratch / "config.json").write_text(json.dumps(config, sort_keys=True), encoding="utf-8")
        return final

    def _user_env(self) -> dict[str, str]:
        """ch-run's own environment: it needs USER (a batch job's may lack it)."""
        environ = dict(self.environ)
        if not environ.get("USER"):
            import pwd  # noqa: PLC0415

            environ["USER"] = pwd.getpwuid(os.getuid()).pw_name
        return environ

    def runtime(self) -> RuntimeInfo:
        """`ch-run --version`."""
        done = self.command(["env", f"USER={self._user_env()['USER']}", "ch-run", "--version"])
        said = (done.stdout or done.stderr).strip()
        return RuntimeInfo("charliecloud", said.splitlines()[0] if done.code == 0 and said else None)

    def run(self, spec: LaunchSpec, output: StreamSink) -> int:
        """ch-run with the project at /work, only envlock's environment (the image's, then the run's), the GPUs
        through the host's libraries injected once by `ch-fromhost --nvidia` and CUDA_VISIBLE_DEVICES; declared
        inputs read-only (READ_ONLY_BINDS)."""
        directory = self.prepare(spec.image_id)
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        image_env = [str(item) for item in (config.get("config") or {}).get("Env") or []]
        environment = dict(item.split("=", 1) for item in image_env if "=" in item)
        environment |= spec.environment
        if spec.gpus:
            self._inject_nvidia(directory)
            if spec.gpu_devices:
                environment["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpu_devices)
        for mount in spec.mounts:
            (directory / "rootfs" / str(mount).lstrip("/")).mkdir(parents=True, exist_ok=True)
        binds = [f"--bind={spec.project_dir.resolve()}:{WORKDIR}", *(f"--bind={m}:{m}" for m in spec.mounts)]
        sources = [host.resolve() for host, _ in spec.read_only]
        for source, (_, inside) in zip(sources, spec.read_only, strict=True):
            _mount_point(source, _on_host(inside, spec.project_dir, directory / "rootfs"))
            binds.append(f"--bind={source}:{inside}")
        uid, _, gid = spec.user.partition(":")
        namespace = ["unshare", "--user", "--map-root-user", "--mount", "--", "sh", "-c", READ_ONLY_BINDS, "envlock"]
        if sources:
            self._check_namespaces()
        read_only = [*namespace, *map(str, sources), "--", "ch-run", f"--uid={uid}", f"--gid={gid}"]
        with tempfile.NamedTemporaryFile("w", prefix="envlock-env-", suffix=".txt", encoding="utf-8") as env_file:
            # Values in a file (mode 0600), not on the command line: passed variables may be secrets.
            env_file.write("".join(f"{name}={value}\n" for name, value in environment.items()))
            env_file.flush()
            args = [
                *(read_only if sources else ["ch-run"]),
                *binds,
                f"--cd={WORKDIR}",
                "--unset-env=*",
                "--env-no-expand",
                f"--set-env={env_file.name}",
                str(directory / "rootfs"),
                "--",
                *spec.command,
            ]
            return self.stream(args, output, self._user_env())

    def _check_namespaces(self) -> None:
        """The namespace READ_ONLY_BINDS needs, tried before the run: where it cannot be made (unprivileged user
        namespaces off, no util-linux `unshare`), the run would fail with a status that is not its command's."""
        done = self.command(["unshare", "--user", "--map-root-user", "--mount", "--", "true"])
        if done.code != 0:
            raise EngineError(
                f"cannot mount the declared inputs read-only under Charliecloud: {first_line(done)}",
                hint="allow unprivileged user namespaces (sysctl user.max_user_namespaces), or run with "
                "--runtime podman or docker; nothing was run",
            )

    def _inject_nvidia(self, directory: Path) -> None:
        marker = directory / "nvidia-injected"
        if marker.exists():
            return
        done = self.command(["ch-fromhost", "--nvidia", str(directory / "rootfs")])
        if done.code != 0:
            raise EngineError(
                f"ch-fromhost --nvidia could not add the host's NVIDIA libraries: {first_line(done)}",
                hint="run without GPUs (--no-gpus) or use --runtime podman with the NVIDIA CDI specification",
            )
        marker.write_text("ch-fromhost --nvidia\n", encoding="utf-8")

    def remove(self, name: str) -> None:
        """Nothing to remove: ch-run leaves no container behind (its process ends with envlock's)."""
        del name


def _on_host(inside: str, project_dir: Path, rootfs: Path) -> Path:
    """Where a container path lies on the host: under the project's mount at /work, else in the image directory."""
    if inside == WORKDIR or inside.startswith(f"{WORKDIR}/"):
        return project_dir.resolve() / inside.removeprefix(WORKDIR).lstrip("/")
    return rootfs / inside.lstrip("/")


def _mount_point(source: Path, target: Path) -> None:
    """ch-run binds only onto a path that exists (the image is read-only): an empty folder or file of the
    source's kind where none is (a reproduction's worktree, the image's directory), as Docker makes them."""
    if target.exists() or target.is_symlink():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        target.mkdir()
    else:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
