"""A small project under Podman and Charliecloud (no Docker at launch): the same image, the same outputs as under
Docker, locally and as Slurm jobs on the local two-node cluster; the record names the runtime. What is tested is the
runtimes' handling of an image, not the example's size: the image is the base and one small package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from envlock.paths import CacheLayout, cache_root
from tests.integration.example import git, small_repo
from tests.integration.localregistry import serve_registry

pytestmark = [pytest.mark.docker, pytest.mark.network, pytest.mark.runtimes]
ENVLOCK = str(Path(sys.executable).with_name("envlock"))
TRAIN = ["python", "train.py", "--out", "out"]
NAME = "envlock-test-runtimes"
# Pins no other module uses (six 1.14.0 for the Docker/Podman/Charliecloud comparison, six 1.17.0 for the inputs):
# its images have IDs of their own, so it is an engine-test group by itself (see tests/conftest.py).
LOCKS_OF_ITS_OWN = True
PIN = "six==1.14.0"


def envlock(*args: str, project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVLOCK, *args[:1], "-C", str(project), *args[1:]], capture_output=True, text=True, check=False
    )


def record_of(project: Path, run_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((project / ".envlock" / "runs" / run_id / "record.json").read_text())
    return data


def last_run(project: Path) -> str:
    return sorted(p.name for p in (project / ".envlock" / "runs").iterdir())[-1]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The small project under an image name of its own, run once under Docker: the outputs to compare with."""
    for program in ("podman", "ch-run"):
        if shutil.which(program) is None:
            pytest.fail(f"{program} is missing: bash scripts/setup.sh installs Podman and Charliecloud")
    project = small_repo(tmp_path_factory.mktemp("small-runtimes") / "project", name=NAME, pin=PIN)
    done = envlock("run", "--output", "out", "--", *TRAIN, project=project)
    assert done.returncode == 0, done.stderr
    reference = record_of(project, last_run(project))
    assert reference["runtime"]["name"] == "docker" and reference["record_version"] == 6
    yield project, reference
    client = docker.from_env()
    for image in client.images.list(name=NAME):
        client.images.remove(image.id, force=True)
    subprocess.run(["podman", "rmi", "--force", reference["image_id"].removeprefix("sha256:")], check=False)


def test_podman_loads_the_image_by_id_and_gives_the_docker_outputs(small: tuple[Path, dict[str, Any]]) -> None:
    project, reference = small
    hex_id = reference["image_id"].removeprefix("sha256:")
    subprocess.run(["podman", "rmi", "--force", hex_id], capture_output=True, check=False)  # a cold load
    done = envlock("run", "--runtime", "podman", "--output", "out", "--", *TRAIN, project=project)
    assert done.returncode == 0, done.stderr
    record = record_of(project, last_run(project))
    assert record["runtime"]["name"] == "podman" and record["runtime"]["version"]
    assert record["image_id"] == reference["image_id"] and record["outputs"] == reference["outputs"]
    inspected = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", hex_id], capture_output=True, check=False
    )
    assert inspected.stdout.decode().strip() == hex_id, "Podman holds it under the same ID"


def test_charliecloud_unpacks_once_by_image_id_and_gives_the_docker_outputs(
    small: tuple[Path, dict[str, Any]],
) -> None:
    project, reference = small
    directory = CacheLayout(cache_root()).charliecloud / reference["image_id"].removeprefix("sha256:")
    shutil.rmtree(directory, ignore_errors=True)
    started = time.monotonic()
    done = envlock("run", "--runtime", "charliecloud", "--output", "out", "--", *TRAIN, project=project)
    cold = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert (directory / "rootfs" / "opt" / "envlock" / "venv").is_dir()
    record = record_of(project, last_run(project))
    assert record["runtime"] == {"name": "charliecloud", "version": record["runtime"]["version"]}
    assert record["image_id"] == reference["image_id"] and record["outputs"] == reference["outputs"]
    assert record["environment"] == {**reference["environment"], "ENVLOCK_RUN_ID": record["run_id"]}
    started = time.monotonic()
    again = envlock("run", "--runtime", "charliecloud", "--", "python", "-c", "print('warm')", project=project)
    warm = time.monotonic() - started
    assert again.returncode == 0 and "warm" in again.stdout, again.stderr
    print(f"charliecloud: cold run (export + unpack + run) {cold:.1f} s, warm start of a print {warm:.1f} s")


def test_the_runtime_comes_from_the_project_and_a_bad_one_is_refused(small: tuple[Path, dict[str, Any]]) -> None:
    project, _ = small
    refused = envlock("run", "--runtime", "singularity", "--", "true", project=project)
    assert refused.returncode == 125 and "unknown runtime 'singularity'" in refused.stderr, "envlock's own exit"
    pyproject = project / "pyproject.toml"
    original = pyproject.read_text()
    pyproject.write_text(original.replace("[tool.envlock]", '[tool.envlock]\nruntime = "charliecloud"'))
    try:
        assert envlock("lock", "--check", project=project).returncode == 0, "the runtime does not make the lock stale"
        done = envlock("run", "--", "python", "-c", "import platform; print(platform.machine())", project=project)
        assert done.returncode == 0, done.stderr
        assert record_of(project, last_run(project))["runtime"]["name"] == "charliecloud"
    finally:
        pyproject.write_text(original)


def wait_for(project: Path, run_id: str, seconds: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        done = envlock("runs", "--json", project=project)
        record = {r["run_id"]: r for r in json.loads(done.stdout)}[run_id]
        if record["status"] in {"finished", "failed", "interrupted"}:
            return record
        time.sleep(2)
    raise AssertionError(f"run {run_id} still {record.get('status')} after {seconds} s")


@pytest.mark.slurm
@pytest.mark.parametrize("runtime", ["podman", "charliecloud"])
def test_a_slurm_job_runs_under_the_runtime_with_a_complete_record(
    small: tuple[Path, dict[str, Any]], runtime: str
) -> None:
    project, reference = small
    if subprocess.run(["scontrol", "ping"], capture_output=True, check=False).returncode != 0:
        pytest.fail("Slurm is not running: bash scripts/services.sh starts the local two-node cluster")
    done = envlock(
        "submit", "--runtime", runtime, "--output", "out", "--slurm", "--time=10", "--", *TRAIN, project=project
    )
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split()[1].rstrip(":")
    record = wait_for(project, run_id)
    assert record["status"] == "finished", record
    assert record["runtime"]["name"] == runtime and record["runtime"]["version"]
    assert record["scheduler"]["request"]["runtime"] == runtime and record["scheduler"]["node"]
    assert record["host"] and record["git"]["commit"] and record["ended"]
    assert record["outputs"] == reference["outputs"] and record["image_id"] == reference["image_id"]


@pytest.mark.slurm
def test_nodes_without_docker_get_the_pushed_image_from_the_registry_or_fail_in_seconds(
    small: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The job's envlock cannot reach any Docker engine (DOCKER_HOST points at nothing): Podman pulls the image by
    digest, Charliecloud fetches its blobs itself; with the registry gone too, the job fails at once, in one line."""
    original, reference = small
    if subprocess.run(["scontrol", "ping"], capture_output=True, check=False).returncode != 0:
        pytest.fail("Slurm is not running: bash scripts/services.sh starts the local two-node cluster")
    project = tmp_path / "project"  # a copy: the module's project keeps its never-pushed images.json
    shutil.copytree(original, project, symlinks=True)
    hex_id = reference["image_id"].removeprefix("sha256:")
    directory = CacheLayout(cache_root()).charliecloud / hex_id

    def cold() -> None:  # neither runtime holds the image: it must come from somewhere
        subprocess.run(["podman", "rmi", "--force", hex_id], capture_output=True, check=False)
        shutil.rmtree(directory, ignore_errors=True)

    def submit(runtime: str, address: str, folder: Path) -> str:
        no_docker = f"--export=ALL,DOCKER_HOST=unix:///nonexistent,ENVLOCK_INSECURE_REGISTRIES={address}"
        done = envlock(
            "submit", "--runtime", runtime, "--output", "out", "--slurm", "--time=10", no_docker, "--", *TRAIN,
            project=folder,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.split()[1].rstrip(":")

    with serve_registry(tmp_path / "registry") as address:
        pushed = envlock("build", "--registry", f"{address}/team", project=project)
        assert pushed.returncode == 0 and f"pushed {address}/team/" in pushed.stdout, pushed.stderr
        # The two jobs side by side (each waits on its node's fetch from the registry), each from a folder of its
        # own: each writes its outputs into its folder.
        folders = {"podman": project, "charliecloud": tmp_path / "project-charliecloud"}
        shutil.copytree(project, folders["charliecloud"], symlinks=True)
        cold()
        started = time.monotonic()
        jobs = {runtime: submit(runtime, address, folder) for runtime, folder in folders.items()}
        for runtime, folder in folders.items():
            record = wait_for(folder, jobs[runtime])
            took = time.monotonic() - started
            run_dir = folder / ".envlock" / "runs" / record["run_id"]
            assert record["status"] == "finished", (run_dir / "log.txt").read_text()
            assert record["runtime"]["name"] == runtime and record["host"]["docker-version"] is None
            assert record["image_id"] == reference["image_id"] and record["outputs"] == reference["outputs"]
            assert record["repo_digests"] and record["repo_digests"][0].startswith(f"{address}/team/")
            slurm_out = next(run_dir.glob("slurm-*.out")).read_text()
            assert f"image {reference['image_id'][:19]} from registry {address}/team/" in slurm_out, slurm_out
            verified = envlock("verify", record["run_id"], "--allow-unsigned", project=folder)
            assert verified.returncode == 0, verified.stdout + verified.stderr
            print(f"{runtime}: job with the image fetched from the registry, no Docker: {took:.1f} s")
    cold()  # the registry is gone too: the node has nothing to run
    started = time.monotonic()
    record = wait_for(project, submit("charliecloud", address, project))
    took = time.monotonic() - started
    assert record["status"] == "failed" and record["exit_code"] is None
    assert record["error"].startswith(
        f"could not restore image {reference['image_id'][:19]} for charliecloud: this node does not hold it and "
        f"cannot get it from the registry (cannot reach the registry {address}: ConnectionError)"
    ), record["error"]
    slurm_out = next((project / ".envlock" / "runs" / record["run_id"]).glob("slurm-*.out")).read_text()
    assert [line for line in slurm_out.splitlines() if line.startswith("error:")] == [f"error: {record['error']}"]
    assert "(elsewhere 15: the image could not be restored" in slurm_out, slurm_out
    assert not directory.exists()
    print(f"no image, no registry: the job failed in {took:.1f} s (submit to final record)")


# six 1.17.0: a lock (and so an image ID) of this module's own, and not the `small` fixture's: the other engine tests,
# several on six 1.16.0 alone, remove their image by ID beside this module's group.
INPUTS = '[project]\nname = "envlock-test-inputs"\nversion = "0.1.0"\ndependencies = ["six==1.17.0"]\n'


def envlock_env(*args: str, project: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`envlock` with variables of its own on top of ours (DOCKER_HOST pointing at nothing: a node without Docker)."""
    return subprocess.run(
        [ENVLOCK, *args[:1], "-C", str(project), *args[1:]], capture_output=True, text=True, check=False,
        env={**os.environ, "USER": os.environ.get("USER") or "root", **env},
    )  # fmt: skip


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    """A small project with a declared input, its image built and pushed to a registry of its own:
    (project, registry address, image ID)."""
    root = tmp_path_factory.mktemp("inputs")
    project = root / "project"
    (project / "data").mkdir(parents=True)
    (project / "pyproject.toml").write_text(INPUTS)
    (project / "data" / "in.txt").write_text("original\n")
    with serve_registry(root / "registry") as address:
        for command in (["lock"], ["build", "--registry", f"{address}/team"]):
            done = envlock_env(*command, project=project, env={"ENVLOCK_INSECURE_REGISTRIES": address})
            assert done.returncode == 0, done.stderr
        git(project, "init", "-q")
        git(project, "add", "-A")
        git(project, "commit", "-qm", "inputs")
        (entry,) = json.loads((project / ".envlock" / "images.json").read_text()).values()
        yield project, address, str(entry["image-id"])
    client = docker.from_env()
    for image in client.images.list(name="envlock-test-inputs"):
        client.images.remove(image.id, force=True)
    subprocess.run(["podman", "rmi", "--force", str(entry["image-id"])[7:]], capture_output=True, check=False)
    shutil.rmtree(CacheLayout(cache_root()).charliecloud / str(entry["image-id"])[7:], ignore_errors=True)


@pytest.mark.parametrize("runtime", ["docker", "podman", "charliecloud"])
def test_a_command_cannot_write_its_declared_inputs_under_any_runtime(
    pushed: tuple[Path, str, str], runtime: str
) -> None:
    project, _, _ = pushed
    before = (project / "data" / "in.txt").read_bytes()
    write = "echo ok > written.txt; touch data/new || echo refused; echo EDITED > data/in.txt"
    done = envlock_env("run", "--runtime", runtime, "-i", "data", "--", "sh", "-c", write, project=project, env={})
    assert done.returncode == 2 and "Read-only file system" in done.stderr, done.stdout + done.stderr
    assert "refused" in done.stdout and not (project / "data" / "new").exists()
    assert (project / "data" / "in.txt").read_bytes() == before, "the input's bytes are unchanged"
    assert (project / "written.txt").read_text() == "ok\n", "the rest of the project stays writable"
    record = record_of(project, last_run(project))
    assert record["runtime"]["name"] == runtime and record["status"] == "failed" and record["exit_code"] == 2


def test_run_on_a_node_without_docker_takes_the_pushed_image_or_says_what_is_missing(
    pushed: tuple[Path, str, str], tmp_path: Path
) -> None:
    """`envlock run --runtime podman|charliecloud` with DOCKER_HOST pointing at nothing: the image recorded for the
    lock comes from the registry by digest; a copy of the project that never pushed it fails in one line."""
    project, address, image_id = pushed
    no_docker = {"DOCKER_HOST": "unix:///nonexistent", "ENVLOCK_INSECURE_REGISTRIES": address}
    for runtime in ("podman", "charliecloud"):
        subprocess.run(["podman", "rmi", "--force", image_id[7:]], capture_output=True, check=False)
        shutil.rmtree(CacheLayout(cache_root()).charliecloud / image_id[7:], ignore_errors=True)
        done = envlock_env("run", "--runtime", runtime, "--", "cat", "data/in.txt", project=project, env=no_docker)
        assert done.returncode == 0 and done.stdout == "original\n", done.stderr
        assert f"image {image_id[:19]} from registry {address}/team/" in done.stderr, done.stderr
        record = record_of(project, last_run(project))
        assert record["runtime"]["name"] == runtime and record["image_id"] == image_id
        assert record["host"]["docker-version"] is None
    never = tmp_path / "never-pushed"
    shutil.copytree(project, never, symlinks=True)
    images = never / ".envlock" / "images.json"
    known = json.loads(images.read_text())
    for entry in known.values():  # as if built here and never pushed: no digest for the lock, nor for its platform
        for recorded in (entry, *entry["platforms"].values()):
            recorded["pushed"] = []
    images.write_text(json.dumps(known))
    subprocess.run(["podman", "rmi", "--force", image_id[7:]], capture_output=True, check=False)
    done = envlock_env("run", "--runtime", "podman", "--", "true", project=never, env=no_docker)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 125 and "Traceback" not in done.stderr, done.stderr
    assert errors == [
        f"error: could not restore image {image_id[:19]} for podman: this node does not hold it, it was never "
        "pushed to a registry, and there is no Docker engine to take it from (cannot inspect "
        f"envlock-test-inputs:{next(iter(json.loads(images.read_text())))[7:19]}: the Docker engine is not "
        "reachable (ConnectionError))"
    ], done.stderr
    assert "(elsewhere 15: the image could not be restored" in done.stderr
    assert "hint: push the image (envlock build --push)" in done.stderr
