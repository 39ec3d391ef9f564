"""Exports for enroot and Apptainer, in the real engine: made twice from one image, the same bytes; the enroot
SquashFS holds the image's venv and /work, the Apptainer OCI archive the image by its ID (a small image of its own,
not the example's: the other tests on the example's image may run beside this one)."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

pytestmark = [pytest.mark.docker, pytest.mark.network, pytest.mark.runtimes]
ENVLOCK = str(Path(sys.executable).with_name("envlock"))


def envlock(*args: str, project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVLOCK, *args[:1], "-C", str(project), *args[1:]], capture_output=True, text=True, check=False
    )


# six 1.11.0, which no other module pins: the image's ID is this module's own (one lock gives one image ID, and tests
# remove images by ID), so it is an engine-test group by itself, beside the others (see tests/conftest.py).
LOCKS_OF_ITS_OWN = True
SMALL = '[project]\nname = "envlock-test-export"\nversion = "0.1.0"\ndependencies = ["six==1.11.0"]\n'


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A small image (the base and six) for the export checks: each export is made twice and compared byte for
    byte, which on the example's image alone took over two minutes; the bytes' order does not depend on size."""
    project = tmp_path_factory.mktemp("export-small")
    (project / "pyproject.toml").write_text(SMALL)
    for command in ("lock", "build"):
        done = envlock(command, project=project)
        assert done.returncode == 0, done.stderr
    (entry,) = json.loads((project / ".envlock" / "images.json").read_text()).values()
    yield project, str(entry["image-id"])
    client = docker.from_env()
    for image in client.images.list(name="envlock-test-export"):
        client.images.remove(image.id, force=True)


def export(kind: str, out: Path, project: Path) -> subprocess.Popen[str]:
    """`envlock export KIND -o OUT`, started: the test's four exports run side by side (each is one docker save,
    then mksquashfs or a copy; in turn they took over two minutes)."""
    args = [ENVLOCK, "export", kind, "-C", str(project), "-o", str(out)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_exports_for_enroot_and_apptainer_are_the_same_bytes_twice(small: tuple[Path, str], tmp_path: Path) -> None:
    project, image_id = small
    kinds = (("enroot", "sqsh"), ("apptainer", "tar"))
    outputs = {kind: [tmp_path / f"{kind}-{n}.{suffix}" for n in (1, 2)] for kind, suffix in kinds}
    started = {(kind, n): export(kind, out, project) for kind, outs in outputs.items() for n, out in enumerate(outs)}
    said: dict[str, str] = {}
    for (kind, _), process in started.items():
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
        assert image_id in stdout
        said.setdefault(kind, stdout)
    for kind, (first, second) in outputs.items():
        # Compared in chunks: each export is the whole image (~220 MB), four of them read whole would be ~900 MB.
        assert filecmp.cmp(first, second, shallow=False), f"{kind}: two exports, the same bytes"
    listed = subprocess.run(
        ["unsquashfs", "-l", str(tmp_path / "enroot-1.sqsh")], capture_output=True, text=True, check=False
    )
    assert "squashfs-root/opt/envlock/venv/bin/python" in listed.stdout and "squashfs-root/work" in listed.stdout
    with tarfile.open(tmp_path / "apptainer-1.tar") as oci:
        index = json.load(oci.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = json.load(oci.extractfile("blobs/sha256/" + index["manifests"][0]["digest"][7:]))  # type: ignore[arg-type]
        assert manifest["config"]["digest"] == image_id
        assert all(f"blobs/sha256/{layer['digest'][7:]}" in oci.getnames() for layer in manifest["layers"])
    assert "apptainer build apptainer-1.sif oci-archive://" in said["apptainer"]
