"""The SBOM and provenance bytes of the example locks, pinned: image IDs depend on them, a refactor must not move them.

The digests were computed with the code as it stood before `build_bom` and `image_statement` were split into
helpers. A change here is a change of every image ID: make it on purpose (a new format), never by accident. Both
documents name envlock's version, so a version bump moves these pins too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from envlock.image.plan import plan_image
from envlock.image.provenance import image_statement
from envlock.image.sbom import sbom_json
from envlock.lock import lockfile

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
IMAGE_ID = "sha256:" + "cd" * 32
PUSHED = "reg.example/example@sha256:" + "ab" * 32


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(
    ("example", "platform", "digest"),
    [
        ("digits", "linux/amd64", "1d1e1073662a4d487a5fb36e263006414f1a5ade0dbf7bd228be05a0e87668e5"),
        ("digits", "linux/arm64", "d84fcca84cc29a8630fc9be4d8442ba683f0ac24ac9e457371abfd742adfb22f"),
        ("torch-gpu", "linux/amd64", "ce4e2345ce22c10245fc40848d8c669e59c45cea99e28b1241eaff47ec5121b9"),
    ],
)
def test_sbom_bytes_are_pinned(example: str, platform: str, digest: str) -> None:
    lock = lockfile.read(EXAMPLES / example / "envlock.lock")
    assert _sha256(sbom_json(lock, platform)) == digest


@pytest.mark.parametrize(
    ("example", "platform", "pushed", "digest"),
    [
        ("digits", "linux/amd64", None, "43a54dadc3ad6d74fa6fb78c7b9459fa6afa307c1e4e38f788ce66bbf25b10fc"),
        ("digits", "linux/amd64", PUSHED, "9760d56210a8d844b592220253b2fc64170c96eec6bf1bb8bc3b8d559b0a2518"),
        # arm64 images are tagged <hash>-arm64 since platform tags came in: the reference in the statement moved.
        ("digits", "linux/arm64", None, "c9d9f5c7935165287d9f61f0a28243c82c9c449ee8e8ee67e3e3870cf0637f27"),
        ("digits", "linux/arm64", PUSHED, "ae11cef166af371c35c34b3591a25a4e92105f5386c09b850f000651fd10d57c"),
        ("torch-gpu", "linux/amd64", None, "e9d890a1c842cda07b2aceb7dc52081454a58b7ac635a6a82b0c1caaa039ae15"),
        ("torch-gpu", "linux/amd64", PUSHED, "0bf2887fd241573355f5b5992afd4bc394cdbcfd2b9bceb1c7c9120b1434c366"),
    ],
)
def test_provenance_statement_is_pinned(example: str, platform: str, pushed: str | None, digest: str) -> None:
    lock = lockfile.read(EXAMPLES / example / "envlock.lock")
    statement = image_statement(plan_image(lock, "example", platform), IMAGE_ID, pushed)
    assert _sha256(json.dumps(statement, sort_keys=True)) == digest
