"""The audit trail against the real engine and registry: SBOM and provenance as referrers of the pushed image,
a signed run attestation that verifies and then names a flipped byte, and a bundle that verifies and reproduces
in an empty directory, with an empty cache, the image gone from the engine and the registry stopped. The project is a
small one (the base and one package): the trail is the point, not the example's ~490 MB."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from envlock.image.provenance import check_pulled
from envlock.image.referrers import retrieve
from envlock.image.registry import HttpRegistry
from envlock.run.records import RunStore
from envlock.signing import load_public_key
from tests.integration.example import small_repo
from tests.integration.localregistry import serve_registry

pytestmark = [pytest.mark.docker, pytest.mark.network]
ENVLOCK = str(Path(sys.executable).with_name("envlock"))
NAME = "envlock-test-audit"
# A lock of this module's own (no other module pins six 1.12.0: one lock gives one image ID, and tests remove images
# by ID), so it is an engine-test group by itself, beside the others (see tests/conftest.py).
LOCKS_OF_ITS_OWN = True


def envlock(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVLOCK, *args], capture_output=True, text=True, check=False, cwd=cwd, env={**os.environ, **(env or {})}
    )


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    # An image name of its own: other tests on this engine build, tag and remove images concurrently.
    project = small_repo(tmp_path / "project", name=NAME, pin="six==1.12.0")
    assert envlock("lock", "--check", "-C", str(project)).returncode == 0
    yield project
    client = docker.from_env()
    for image in client.images.list():
        names = image.tags + image.attrs.get("RepoDigests", [])
        if any(name.split("/")[-1].startswith(NAME) for name in names):
            client.images.remove(image.id, force=True)


def test_push_run_verify_tamper_bundle_reproduce(repo: Path, tmp_path: Path) -> None:
    key = tmp_path / "keys" / "signing.pem"
    assert envlock("key", "generate", "-o", str(key)).returncode == 0
    public = tmp_path / "keys" / "signing.pem.pub"
    signing = {"ENVLOCK_SIGNING_KEY": str(key)}
    with serve_registry(tmp_path / "registry") as address:
        built = envlock("build", "-C", str(repo), "--registry", f"{address}/team", env=signing)
        assert built.returncode == 0 and "pushed SBOM and provenance as referrers" in built.stdout, built.stderr
        pushed = built.stdout.split("pushed ")[1].split()[0]
        image_id = built.stdout.split("(")[1].split(")")[0]
        # Anyone with the digest gets the SBOM and the provenance back from the registry (tag-schema fallback).
        found = retrieve(HttpRegistry(address), pushed)
        assert found.sbom is not None and json.loads(found.sbom)["bomFormat"] == "CycloneDX"
        assert found.attestation is not None
        digest = pushed.partition("@")[2]
        said = check_pulled(found.attestation, digest, image_id, [load_public_key(public)], required=True)
        assert "signed by" in said

        ran = envlock(
            "run", "-C", str(repo), "--output", "out", "--", "python", "train.py", "--out", "out", env=signing
        )
        assert ran.returncode == 0, ran.stderr
        (record,) = RunStore(repo).all()
        verified = envlock("verify", record.run_id, "-C", str(repo), "--key", str(public))
        assert verified.returncode == 0 and "VERIFIED" in verified.stdout, verified.stdout + verified.stderr
        assert f"ok image {image_id[:19]} (by ID)" in verified.stdout

        model = repo / "out" / "model.pkl"
        original = model.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        model.write_bytes(bytes(flipped))
        failed = envlock("verify", record.run_id, "-C", str(repo), "--key", str(public))
        assert failed.returncode == 26 and "MISMATCH output out/model.pkl" in failed.stdout, failed.stdout
        model.write_bytes(original)

        restored_dir = tmp_path / "restorer"
        restored_dir.mkdir()
        restored = envlock("restore", pushed, "-C", str(restored_dir), "--key", str(public))
        assert restored.returncode == 0 and "provenance subject = manifest" in restored.stdout, restored.stderr

        bundle = tmp_path / "run.tar"
        made = envlock("bundle", record.run_id, "-C", str(repo), "-o", str(bundle), "--with-image")
        assert made.returncode == 0 and "image archive included" in made.stdout, made.stderr

    # Elsewhere: only the bundle, no project, an empty cache, no image in the engine, no registry.
    docker.from_env().images.remove(image_id, force=True)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copyfile(bundle, fresh / "run.tar")
    empty_cache = {"ENVLOCK_CACHE_DIR": str(tmp_path / "empty-cache")}
    refused = envlock("reproduce", "run.tar", "-C", str(fresh), cwd=fresh, env=empty_cache)
    assert refused.returncode == 30 and "UNTRUSTED KEY" in refused.stderr, refused.stdout + refused.stderr
    verdict = envlock("reproduce", "run.tar", "-C", str(fresh), "--key", str(public), cwd=fresh, env=empty_cache)
    assert verdict.returncode == 0 and "REPRODUCED" in verdict.stdout, verdict.stdout + verdict.stderr
    assert "output out/model.pkl: identical" in verdict.stdout and "from archive" in verdict.stderr
    checked = envlock("verify", "run.tar", "-C", str(fresh), "--key", str(public), cwd=fresh, env=empty_cache)
    assert checked.returncode == 0 and "VERIFIED" in checked.stdout, checked.stdout + checked.stderr
    assert f"signature by signing.pem ({load_public_key(public).keyid[:16]}), trusted: --key" in checked.stdout
    kept = f"envlock-reproduction-{record.run_id}"
    assert sorted(p.name for p in fresh.iterdir()) == [kept, "run.tar"], "the reproduction's folder stays"
    assert len(list((fresh / kept / ".envlock" / "runs").glob("*/verdict.json"))) == 1
