"""`envlock export k8s`: a Job pinned by digest, checked against Kubernetes' own schemas (strict)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import kubernetes_validate
import pytest

from envlock.cli.app import run
from envlock.cluster.k8s import KubeJobSpec, to_k8s_job
from envlock.engine.launch import SHM
from envlock.image.catalog import record_image
from envlock.lock import lockfile
from envlock.lock.project import lock_project
from envlock.lock.resolve import LockedPackage
from envlock.lock.spec import load_spec
from tests.fakes import TORCH_251_AMD64, FakeResolver, package

DIGEST = "127.0.0.1:5000/team/gpu@sha256:" + "d" * 64
IMAGE_ID = "sha256:" + "e" * 64


def locked(write_project: Callable[[str], Path], packages: Sequence[LockedPackage]) -> Path:
    project = write_project('[project]\nname = "gpu_Train"\ndependencies = ["torch==2.5.1"]\n')
    lock_project(load_spec(project), FakeResolver({"linux/amd64": packages}))
    return project


@pytest.mark.parametrize("kubernetes", ["1.27", "1.32"])
def test_cuda_job_is_valid_and_pinned(write_project: Callable[[str], Path], kubernetes: str) -> None:
    lock = lockfile.read(locked(write_project, TORCH_251_AMD64) / "envlock.lock")
    job = to_k8s_job(lock, "linux/amd64", KubeJobSpec(["python", "train.py"], DIGEST, IMAGE_ID, "gpu_Train", seed=3,
                                                     namespace="ml", code_claim="project-code"))  # fmt: skip
    kubernetes_validate.validate(job, kubernetes, strict=True)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == DIGEST and container["command"] == ["python", "train.py"]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PYTHONHASHSEED"] == "3" and env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert env["ENVLOCK_LOCK_HASH"] == lock.lock_hash and env["ENVLOCK_IMAGE_ID"] == IMAGE_ID
    annotations = job["metadata"]["annotations"]
    assert annotations["dev.envlock/lock-hash"] == lock.lock_hash
    assert annotations["dev.envlock/driver-min"] == "550.54.14" and annotations["dev.envlock/cuda"] == "12.4"
    assert job["metadata"]["name"] == f"gpu-train-{lock.short_hash}" and job["metadata"]["namespace"] == "ml"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["code"]["persistentVolumeClaim"]["claimName"] == "project-code"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {str(SHM): "dshm", "/work": "code"}


def test_the_pods_dev_shm_is_memory_not_the_runtimes_64_mib(write_project: Callable[[str], Path]) -> None:
    """DataLoader workers hand batches over through /dev/shm; a pod's own is 64 MiB."""
    lock = lockfile.read(locked(write_project, [package("numpy", "2.1.3")]) / "envlock.lock")
    job = to_k8s_job(lock, "linux/amd64", KubeJobSpec(["python", "t.py"], DIGEST, IMAGE_ID, "cpu"))
    kubernetes_validate.validate(job, "1.32", strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "dshm", "mountPath": str(SHM)}]


def test_cpu_job_requests_no_gpu(write_project: Callable[[str], Path]) -> None:
    lock = lockfile.read(locked(write_project, [package("numpy", "2.1.3")]) / "envlock.lock")
    job = to_k8s_job(lock, "linux/amd64", KubeJobSpec(["python", "t.py"], DIGEST, IMAGE_ID, "cpu"))
    kubernetes_validate.validate(job, "1.32", strict=True)
    assert "resources" not in job["spec"]["template"]["spec"]["containers"][0]


def test_cli_refuses_an_unpushed_image_then_writes_the_job(
    write_project: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    project = locked(write_project, TORCH_251_AMD64)
    assert run(["export", "k8s", "-C", str(project), "--", "python", "train.py"]) == 2
    assert "never pushed" in capsys.readouterr().err
    lock = lockfile.read(project / "envlock.lock")
    record_image(project, lock.lock_hash, IMAGE_ID, f"gpu_train:{lock.short_hash}", "base", pushed=DIGEST)
    out = project / "job.json"
    assert run(["export", "k8s", "-C", str(project), "-o", str(out), "--gpus", "2", "--", "python", "train.py"]) == 0
    job = json.loads(out.read_text())
    kubernetes_validate.validate(job, "1.32", strict=True)
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
