"""restore / reproduce against the real engine and registry: registry by digest, archive, tampering, dirty code."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from envlock.run.records import RunStore
from tests.integration.example import digits_repo, git
from tests.integration.localregistry import serve_registry

pytestmark = [pytest.mark.docker, pytest.mark.network]
ENVLOCK = str(Path(sys.executable).with_name("envlock"))


def envlock(project: Path, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ENVLOCK, command, "-C", str(project), *args], capture_output=True, text=True, check=False)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    """The CPU example in a git repository of its own, with its lock (a fresh lock would wait for the arm64 base,
    built meanwhile for the emulation tests)."""
    project = digits_repo(tmp_path / "digits")
    assert envlock(project, "lock", "--check").returncode == 0
    yield project
    client = docker.from_env()
    for image in client.images.list():
        names = image.tags + image.attrs.get("RepoDigests", [])
        if any(name.split("/")[-1].startswith("digits") for name in names):
            client.images.remove(image.id, force=True)


def remove_image(image_id: str) -> None:
    docker.from_env().images.remove(image_id, force=True)


def test_reproduce_from_the_registry_then_from_an_archive(repo: Path, tmp_path: Path) -> None:
    with serve_registry(tmp_path / "registry") as address:
        built = envlock(repo, "build", "--registry", f"{address}/team")
        assert built.returncode == 0 and f"pushed {address}/team/digits@sha256:" in built.stdout, built.stderr
        ran = envlock(repo, "run", "--output", "out", "--", "python", "train.py", "--out", "out")
        assert ran.returncode == 0, ran.stderr
        (original,) = RunStore(repo).all()
        assert original.repo_digests and original.repo_digests[0].startswith(f"{address}/team/digits@sha256:")
        archive = tmp_path / "digits.tar"
        archived = envlock(repo, "archive", original.run_id, "-o", str(archive))
        assert archived.returncode == 0 and "verified" in archived.stdout, archived.stderr

        remove_image(original.image_id)
        verdict = envlock(repo, "reproduce", original.run_id)
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
        assert "REPRODUCED" in verdict.stdout and "output out/model.pkl: identical" in verdict.stdout
        assert "from registry" in verdict.stderr
    # The registry is gone now (registries expire images too): the archive brings the image back.
    remove_image(original.image_id)
    restored = envlock(repo, "restore", original.run_id, "--archive", str(archive), "--no-rebuild")
    assert restored.returncode == 0 and f"from archive {archive}" in restored.stdout, restored.stderr
    tags = docker.from_env().images.get(original.image_id).tags
    assert tags == [original.image_reference], "the restored image is found by its name:tag again"
    rerun = envlock(repo, "run", "--", "true")
    assert rerun.returncode == 0 and "loading" not in rerun.stderr, "run uses the restored image, no rebuild"
    (again,) = [r for r in RunStore(repo).all() if r.reproduces == original.run_id]
    assert again.image_id == original.image_id

    # A byte flipped in the top layer (the lock's, which no other image shares): a restore reads only the layers
    # the engine lacks, so damage in a layer the engine holds (the base's) is never read, and never loaded.
    with tarfile.open(archive) as tar:
        top = tar.getmember(json.load(tar.extractfile("manifest.json"))[0]["Layers"][-1])  # type: ignore[arg-type]
    with archive.open("r+b") as handle:  # in place: the archive is the whole image (~490 MB)
        handle.seek(top.offset_data + top.size // 2)
        byte = handle.read(1)[0]
        handle.seek(-1, 1)
        handle.write(bytes([byte ^ 0xFF]))
    remove_image(original.image_id)
    # Images of other tests built from the same lock (under other names) hold that layer too: without them the
    # engine lacks it, so the restore must read the archive's (damaged) copy.
    top_layer = "sha256:" + top.name.split("/")[0]
    client = docker.from_env()
    for image in client.images.list():
        if top_layer in image.attrs.get("RootFS", {}).get("Layers", []):
            client.images.remove(image.id, force=True)
    refused = envlock(repo, "restore", original.run_id, "--archive", str(archive), "--no-rebuild")
    assert refused.returncode == 15 and "corrupt or tampered" in refused.stderr and str(archive) in refused.stderr
    rebuilt = envlock(repo, "restore", original.run_id, "--archive", str(archive))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "refused: archive" in rebuilt.stderr and f"restored {original.image_id} from rebuild" in rebuilt.stdout


def test_dirty_code_is_reproduced_from_the_saved_diff_and_moved_outputs_are_named(repo: Path) -> None:
    train = repo / "train.py"
    train.write_text(train.read_text() + "\n# an uncommitted change\n")
    assert envlock(repo, "run", "--output", "out", "--", "python", "train.py", "--out", "out").returncode == 0
    (dirty,) = RunStore(repo).all()
    assert dirty.git is not None and dirty.git.dirty and dirty.git.diff_sha256
    git(repo, "checkout", "--", "train.py")  # the working tree moved on; the record still has the diff
    verdict = envlock(repo, "reproduce", dirty.run_id)
    assert verdict.returncode == 0 and "REPRODUCED" in verdict.stdout, verdict.stdout + verdict.stderr

    (repo / "clock.py").write_text(
        "import json, os, time\nos.makedirs('out', exist_ok=True)\n"
        "json.dump({'accuracy': 0.9, 'when': time.time()}, open('out/clock.json', 'w'))\n"
    )
    git(repo, "add", "clock.py")
    git(repo, "commit", "-qm", "clock")
    assert envlock(repo, "run", "--output", "out/clock.json", "--", "python", "clock.py").returncode == 0
    flaky = RunStore(repo).all()[-1]
    verdict = envlock(repo, "reproduce", flaky.run_id)
    assert verdict.returncode == 16 and "NOT REPRODUCED" in verdict.stdout
    assert "output out/clock.json: differs" in verdict.stdout and "when:" in verdict.stdout
    assert "accuracy" not in verdict.stdout, "only what moved is listed"
    tolerant = envlock(repo, "reproduce", flaky.run_id, "--atol", "1e9")
    assert tolerant.returncode == 0 and "within tolerance" in tolerant.stdout
