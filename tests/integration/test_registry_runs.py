"""Runs in the registry, against the real engine and a real registry (distribution 2.8: the tag-schema fallback):
`run --push` publishes the run beside its image; a second folder with an empty cache and the image gone from the
engine lists it (`runs --registry`) and reproduces it from its reference alone (with the signer's key). The project is
a small one (the base and one package): what crosses the registry is the point, not the example's ~490 MB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from envlock.evidence.published import RUN_TYPE
from envlock.image.referrers import DSSE_TYPE, SBOM_TYPE, checked_referrers
from envlock.image.registry import HttpRegistry
from envlock.run.records import RunStore
from tests.integration.example import small_repo
from tests.integration.localregistry import serve_registry

pytestmark = [pytest.mark.docker, pytest.mark.network]
ENVLOCK = str(Path(sys.executable).with_name("envlock"))
NAME = "envlock-test-pubrun"
# A lock of this module's own (no other module pins six 1.13.0: one lock gives one image ID, and tests remove images
# by ID), so it is an engine-test group by itself, beside the others (see tests/conftest.py).
LOCKS_OF_ITS_OWN = True


def envlock(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVLOCK, *args], capture_output=True, text=True, check=False, cwd=cwd, env={**os.environ, **(env or {})}
    )


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    # An image name of its own: other tests on this engine build, tag and remove images concurrently.
    project = small_repo(tmp_path / "project", name=NAME, pin="six==1.13.0")
    assert envlock("lock", "--check", "-C", str(project)).returncode == 0
    yield project
    client = docker.from_env()
    for image in client.images.list():
        names = image.tags + image.attrs.get("RepoDigests", [])
        if any(name.split("/")[-1].startswith(NAME) for name in names):
            client.images.remove(image.id, force=True)


def test_run_push_then_list_and_reproduce_in_a_fresh_folder(repo: Path, tmp_path: Path) -> None:
    key = tmp_path / "keys" / "signing.pem"
    assert envlock("key", "generate", "-o", str(key)).returncode == 0
    public = str(tmp_path / "keys" / "signing.pem.pub")
    signing = {"ENVLOCK_SIGNING_KEY": str(key)}
    client = docker.from_env()
    with serve_registry(tmp_path / "registry") as address:
        built = envlock("build", "-C", str(repo), "--registry", f"{address}/team", env=signing)
        assert built.returncode == 0 and "pushed SBOM and provenance as referrers" in built.stdout, built.stderr
        image_id = built.stdout.split("(")[1].split(")")[0]
        image = built.stdout.split("pushed ")[1].split()[0].partition("@")[2]
        ran = envlock(
            "run", "-C", str(repo), "--push", "--output", "out", "--", "python", "train.py", "--out", "out", env=signing
        )
        assert ran.returncode == 0, ran.stderr
        (record,) = RunStore(repo).all()
        line = next(x for x in ran.stdout.splitlines() if x.startswith(f"pushed run {record.run_id} "))
        ref = line.rsplit(": ", 1)[1]
        repository = f"team/{NAME}"
        assert ref.startswith(f"{address}/{repository}@sha256:") and f"as a referrer of {image}" in line

        # Among the image's referrers (this registry has no referrers API: the tag-schema index), beside the
        # image's own SBOM and provenance, each fetched by digest and checked to refer to the image.
        registry = HttpRegistry(address)
        assert registry.referrers(repository, image) is None
        found, refused = checked_referrers(registry, repository, image)
        assert refused == [] and sorted(r.artifact_type for r in found) == sorted([SBOM_TYPE, DSSE_TYPE, RUN_TYPE])
        assert ref.partition("@")[2] in {r.digest for r in found}

        # Elsewhere: a new folder, an empty cache, the image gone from the engine; the reference and a public key.
        client.images.remove(image_id, force=True)
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        empty_cache = {"ENVLOCK_CACHE_DIR": str(tmp_path / "empty-cache")}
        listed = envlock("runs", "--registry", f"{address}/{repository}", env=empty_cache)
        assert listed.returncode == 0 and listed.stdout.startswith(record.run_id) and ref in listed.stdout
        lock_listed = envlock("runs", "--registry", f"{address}/{repository}", "--lock", record.lock_hash)
        assert lock_listed.returncode == 0 and ref in lock_listed.stdout, lock_listed.stderr

        started = time.monotonic()
        verdict = envlock("reproduce", ref, "-C", str(fresh), "--key", public, cwd=fresh, env=empty_cache)
        reproduce_s = time.monotonic() - started
        assert verdict.returncode == 0 and "REPRODUCED" in verdict.stdout, verdict.stdout + verdict.stderr
        assert "output out/model.pkl: identical" in verdict.stdout
        assert f"image {image_id[:19]} pulled from {address}/{repository}@{image}" in verdict.stderr
        assert "VERIFIED: signed by signing.pem" in verdict.stderr
        kept = fresh / f"envlock-reproduction-{record.run_id}"
        assert [p.name for p in fresh.iterdir()] == [kept.name]
        assert len(list((kept / ".envlock" / "runs").glob("*/verdict.json"))) == 1
        evidence = int(verdict.stderr.split(" bytes of evidence")[0].rsplit(" ", 1)[-1])

        # Beside it: `docker pull` of the same image alone.
        manifest = json.loads(registry.manifest(repository, image) or b"{}")
        image_bytes = sum(d["size"] for d in [manifest["config"], *manifest["layers"]])
        client.images.remove(image_id, force=True)
        started = time.monotonic()
        client.images.pull(f"{address}/{repository}@{image}")
        pull_s = time.monotonic() - started
    print(
        f"\nreproduce {ref}: {reproduce_s:.1f} s, evidence {evidence} bytes + image {image_bytes} bytes;"
        f" docker pull of the image alone: {pull_s:.1f} s, {image_bytes} bytes"
    )


@pytest.mark.slurm
def test_a_submitted_job_publishes_its_run_from_the_node_when_it_finished(repo: Path, tmp_path: Path) -> None:
    """`submit --push`: the node (this host's Slurm) pushes the finished run beside its image, as `run --push`."""
    if subprocess.run(["scontrol", "ping"], capture_output=True, check=False).returncode != 0:
        pytest.fail("Slurm is not running: bash scripts/services.sh starts the local two-node cluster")
    with serve_registry(tmp_path / "registry") as address:
        built = envlock("build", "-C", str(repo), "--registry", f"{address}/team")
        assert built.returncode == 0, built.stderr
        command = ["python", "train.py", "--out", "out"]
        submitted = envlock(
            "submit", "-C", str(repo), "--push", "--output", "out", "--slurm", "--time=5", "--", *command
        )
        assert submitted.returncode == 0, submitted.stderr
        run_id = submitted.stdout.split()[1].rstrip(":")
        waited = envlock("runs", "-C", str(repo), "wait", run_id, "--timeout", "240")
        job_out = "".join(p.read_text() for p in (repo / ".envlock" / "runs" / run_id).glob("slurm-*.out"))
        assert waited.returncode == 0, waited.stdout + job_out
        assert f"pushed run {run_id} " in job_out, job_out
        listed = envlock("runs", "--registry", f"{address}/team/{NAME}")
        assert listed.returncode == 0 and listed.stdout.startswith(run_id), listed.stdout + listed.stderr
        record = json.loads((repo / ".envlock" / "runs" / run_id / "record.json").read_text())
        assert record["scheduler"]["request"]["push"] is True
