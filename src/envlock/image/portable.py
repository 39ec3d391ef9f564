"""Images for runtimes envlock does not drive: a SquashFS for enroot / pyxis (`srun --container-image=`), an OCI
archive for Apptainer (`apptainer build x.sif oci-archive://…`). Both are made from a verified export of the image
(config digest = image ID, each layer = its diff_id) and are byte-for-byte the same each time."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from envlock.engine.archive import ImageArchive, sha256_digest
from envlock.engine.charliecloud import unpack_archive
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


def oci_archive(archive: Path, image_id: str, out: Path, reference: str) -> str:
    """An OCI image layout in a tar (Apptainer's oci-archive:), layers uncompressed as the engine has them, entries
    in a fixed order with fixed metadata. Returns the manifest's digest."""
    with ImageArchive(archive, f"the export of {image_id[:19]}") as source:
        image = source.image(image_id)
        sizes = [member.size if member else 0 for member in image.layers]
        layers = [
            {"mediaType": OCI_LAYER, "digest": diff_id, "size": size}
            for diff_id, size in zip(image.config.diff_ids, sizes, strict=True)
        ]
        oci_manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": image_id, "size": len(image.config.data)},
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
                        "digest": sha256_digest(oci_manifest),
                        "size": len(oci_manifest),
                        "annotations": {"org.opencontainers.image.ref.name": reference},
                    }
                ],
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        buffer = out.with_name(f".{out.name}.partial")
        try:  # a refused layer leaves no partial file behind
            with buffer.open("wb") as sink, tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as target:
                _add(target, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
                _add(target, "index.json", index)
                _add(target, f"blobs/sha256/{sha256_digest(oci_manifest).removeprefix('sha256:')}", oci_manifest)
                _add(target, f"blobs/sha256/{image_id.removeprefix('sha256:')}", image.config.data)
                seen: set[str] = set()
                for at, (diff_id, size) in enumerate(zip(image.config.diff_ids, sizes, strict=True)):
                    if diff_id in seen:
                        continue
                    seen.add(diff_id)
                    info = tarfile.TarInfo(f"blobs/sha256/{diff_id.removeprefix('sha256:')}")
                    info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o644, "", ""
                    target.addfile(info, source.layer(image, at))
            buffer.replace(out)
        finally:
            buffer.unlink(missing_ok=True)
    return sha256_digest(oci_manifest)
