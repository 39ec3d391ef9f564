"""Images for runtimes envlock does not drive: a SquashFS for enroot / pyxis (`srun --container-image=`), an OCI
archive for Apptainer (`apptainer build x.sif oci-archive://…`). Both are made from a verified export of the image
(config digest = image ID, each layer = its diff_id) and are byte-for-byte the same each time."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from envlock.engine.charliecloud import Hashing, unpack_archive
from envlock.errors import BuildError

# mksquashfs (squashfs-tools 4.5) options that make the bytes depend on the tree alone: owner root, every time (and
# the filesystem's own) fixed, no xattrs, one compressor setting; files are sorted by name by mksquashfs itself.
SQUASHFS_OPTIONS = ("-noappend", "-all-root", "-no-xattrs", "-comp", "gzip", "-mkfs-time", "0", "-all-time", "0")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def enroot_squashfs(archive: Path, image_id: str, out: Path, scratch: Path) -> None:
    """The image's root filesystem as a SquashFS enroot and pyxis accept; the image's environment goes to
    /etc/environment (where enroot reads it)."""
    if shutil.which("mksquashfs") is None:
        raise BuildError("mksquashfs is not installed", hint="apt-get install squashfs-tools (scripts/setup.sh does)")
    with tempfile.TemporaryDirectory(prefix="enroot-", dir=scratch) as tmp:
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        config = unpack_archive(archive, image_id, rootfs)
        env = (config.get("config") or {}).get("Env") or []
        (rootfs / "etc").mkdir(exist_ok=True)
        (rootfs / "etc" / "environment").write_text("".join(f"{item}\n" for item in env), encoding="utf-8")
        (rootfs / "work").mkdir(exist_ok=True)
        partial = Path(tmp) / "image.sqsh"
        done = subprocess.run(
            ["mksquashfs", str(rootfs), str(partial), *SQUASHFS_OPTIONS, "-quiet", "-no-progress"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            raise BuildError(f"mksquashfs failed: {said[-1] if said else done.returncode}")
        shutil.move(partial, out)


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    archive.addfile(info, io.BytesIO(data))


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_archive(archive: Path, image_id: str, out: Path, reference: str) -> str:
    """An OCI image layout in a tar (Apptainer's oci-archive:), layers uncompressed as the engine has them, entries
    in a fixed order with fixed metadata. Returns the manifest's digest."""
    with tarfile.open(archive) as source:
        manifest = json.load(source.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
        config = source.extractfile(manifest["Config"]).read()  # type: ignore[union-attr]
        if _digest(config) != image_id:
            raise BuildError(f"the exported image is not {image_id[:19]}: its config has another digest")
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        layers = []
        for diff_id, name in zip(diff_ids, manifest["Layers"], strict=True):
            member = source.getmember(name)
            layers.append({"mediaType": OCI_LAYER, "digest": diff_id, "size": member.size})
        oci_manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": image_id, "size": len(config)},
                "layers": layers,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        index = json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": _digest(oci_manifest),
                        "size": len(oci_manifest),
                        "annotations": {"org.opencontainers.image.ref.name": reference},
                    }
                ],
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        buffer = out.with_name(f".{out.name}.partial")
        with buffer.open("wb") as sink, tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as target:
            _add(target, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            _add(target, "index.json", index)
            _add(target, f"blobs/sha256/{_digest(oci_manifest).removeprefix('sha256:')}", oci_manifest)
            _add(target, f"blobs/sha256/{image_id.removeprefix('sha256:')}", config)
            seen: set[str] = set()
            for diff_id, name in zip(diff_ids, manifest["Layers"], strict=True):
                if diff_id in seen:
                    continue
                seen.add(diff_id)
                member = source.getmember(name)
                info = tarfile.TarInfo(f"blobs/sha256/{diff_id.removeprefix('sha256:')}")
                info.size, info.mtime, info.mode, info.uname, info.gname = member.size, 0, 0o644, "", ""
                with source.extractfile(member) as layer:  # type: ignore[union-attr]
                    hashing = Hashing(layer)
                    target.addfile(info, hashing)
                    if hashing.drain() != diff_id:
                        buffer.unlink()
                        raise BuildError(f"layer {name} of {image_id[:19]} is not {diff_id[:19]}")
        buffer.replace(out)
    return _digest(oci_manifest)
