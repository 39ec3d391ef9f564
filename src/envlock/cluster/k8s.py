"""A Kubernetes Job that runs the lock's image by registry digest."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from envlock.engine.launch import SHM, WORKDIR, determinism_env
from envlock.errors import UsageError
from envlock.lock.lockfile import Lock


@dataclass(frozen=True)
class KubeJobSpec:
    """What the Kubernetes Job runs, and where its code comes from."""

    command: list[str]
    image: str  # repo@sha256:… — a cluster pulls by digest, never by a moving tag
    image_id: str
    name: str
    seed: int = 0
    gpus: int | None = None  # None: 1 for a CUDA lock, 0 for a CPU lock
    namespace: str | None = None
    code_claim: str | None = None  # a PersistentVolumeClaim holding the project, mounted at /work


def _dns_label(text: str, limit: int = 63) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:limit].rstrip("-") or "envlock"


def to_k8s_job(lock: Lock, platform: str, request: KubeJobSpec) -> dict[str, Any]:
    """A batch/v1 Job pinned by digest, with the run environment and the lock's identity as annotations."""
    cuda = lock.target(platform).cuda
    gpus = request.gpus if request.gpus is not None else (1 if cuda.kind == "cuda" else 0)
    annotations = {
        "dev.envlock/lock-hash": lock.lock_hash,
        "dev.envlock/image-id": request.image_id,
        "dev.envlock/platform": platform,
        "dev.envlock/cuda": cuda.version if cuda.kind == "cuda" else "cpu",
    }
    if cuda.kind == "cuda":
        annotations["dev.envlock/driver-min"] = cuda.driver_min
        annotations["dev.envlock/driver-min-compat"] = cuda.driver_min_compat
    labels = {"app.kubernetes.io/managed-by": "envlock", "dev.envlock/lock": lock.short_hash}
    env: list[dict[str, Any]] = [
        {"name": name, "value": value}
        for name, value in determinism_env(request.seed, request.image_id, lock.lock_hash).items()
    ]
    # The pod's own UID names the run: unique per attempt, visible from the cluster.
    env.append({"name": "ENVLOCK_RUN_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}})
    container: dict[str, Any] = {
        "name": "train",
        "image": request.image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(request.command),
        "workingDir": WORKDIR,
        "env": env,
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    # A pod's /dev/shm is the runtime's 64 MiB: DataLoader workers need more. A memory-backed emptyDir in its place
    # (counted against the pod's memory, as the docs of every GPU operator advise).
    container["volumeMounts"] = [{"name": "dshm", "mountPath": str(SHM)}]
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
    }
    if request.code_claim:
        container["volumeMounts"].append({"name": "code", "mountPath": WORKDIR})
        pod["volumes"].append({"name": "code", "persistentVolumeClaim": {"claimName": request.code_claim}})
    metadata: dict[str, Any] = {
        "name": _dns_label(f"{request.name}-{lock.short_hash}"),
        "labels": labels,
        "annotations": annotations,
    }
    if request.namespace:
        metadata["namespace"] = request.namespace
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 0,
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod},
        },
    }


def pushed_image(known: dict[str, Any]) -> tuple[str, str]:
    """(registry digest, image ID) of a lock's image as images.json knows it; a cluster pulls only by digest."""
    pushed = known.get("pushed") or []
    if not pushed or not known.get("image-id"):
        raise UsageError(
            "the lock's image was never pushed: a cluster can only pull it from a registry, by digest",
            hint="envlock build --push (registry from [tool.envlock]) or envlock build --registry HOST/NAMESPACE",
        )
    return str(pushed[-1]), str(known["image-id"])
