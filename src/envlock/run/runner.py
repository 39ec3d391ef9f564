"""`envlock run`: preflight the host against the lock, launch in the pinned image, record the run."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from envlock.engine.launch import Launcher, LaunchSpec, Output, determinism_env
from envlock.errors import EnvlockError
from envlock.lock.lockfile import Lock
from envlock.run.gitstate import GitState
from envlock.run.hostprobe import HostState
from envlock.run.preflight import check_host, enforce
from envlock.run.records import RunRecord, RunStore, Status, new_run_id, now
from envlock.run.tracking import CLIENT_SETTINGS, TrackedRun, Tracking, stack_tags, status_of

# Metrics files a run keeps a copy of, so a later run can be compared with them within a tolerance.
METRICS_SUFFIXES = (".json", ".csv")
METRICS_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class RunRequest:
    """What the user asked to run, and how."""

    command: list[str]
    seed: int = 0
    force: bool = False
    gpus: bool | None = None  # None: when the host has GPUs and the lock is CUDA
    outputs: tuple[str, ...] = ()
    pass_env: tuple[str, ...] = ()
    reproduces: str | None = None
    gpu_devices: tuple[str, ...] = ()  # only these GPUs (indices or UUIDs), e.g. the ones Slurm allotted the job
    settings: Mapping[str, str] = field(default_factory=dict)  # envlock-set variables (a job's rank), recorded
    host_network: bool = False  # share the host's network (a multi-node job: NCCL between nodes)


@dataclass(frozen=True)
class PinnedImage:
    """The image the run uses, by ID, with what is known of it."""

    image_id: str
    reference: str
    repo_digests: tuple[str, ...] = ()


def new_record(
    run_id: str,
    status: Status,
    request: RunRequest,
    image: PinnedImage,
    lock: Lock,
    *,
    platform: str,
    git: dict[str, Any],
    host: dict[str, Any],
    passed_env: list[str],
    notes: tuple[str, ...] = (),
    scheduler: dict[str, Any] | None = None,
    container: str | None = None,
) -> RunRecord:
    """A run's record as it starts (or is queued): what runs, in which image, with which settings."""
    return RunRecord(
        run_id=run_id,
        status=status,
        command=list(request.command),
        image_id=image.image_id,
        image_reference=image.reference,
        repo_digests=list(image.repo_digests),
        lock_hash=lock.lock_hash,
        platform=platform,
        git=git,
        host=host,
        seed=request.seed,
        environment={
            **determinism_env(request.seed, image.image_id, lock.lock_hash),
            "ENVLOCK_RUN_ID": run_id,
            **request.settings,
        },
        passed_env=passed_env,
        forced=request.force and any(n.startswith("forced: ") for n in notes),
        preflight=list(notes),
        started=now(),
        container=container or f"envlock-run-{run_id}",
        envlock_pid=os.getpid(),
        reproduces=request.reproduces,
        scheduler=scheduler,
    )


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_outputs(project_dir: Path, outputs: tuple[str, ...]) -> dict[str, str | None]:
    """sha256 of each declared output; a directory counts as every file in it. None: not produced."""
    hashes: dict[str, str | None] = {}
    for declared in outputs:
        path = project_dir / declared
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                hashes[file.relative_to(project_dir).as_posix()] = sha256_file(file)
        else:
            hashes[declared] = sha256_file(path) if path.is_file() else None
    return hashes


def run_in_image(
    lock: Lock,
    lock_text: str,
    platform: str,
    request: RunRequest,
    *,
    project_dir: Path,
    image: PinnedImage,
    host: HostState,
    git: GitState,
    launcher: Launcher,
    store: RunStore,
    output: Output,
    queued: RunRecord | None = None,
    tracking: Tracking | None = None,
) -> RunRecord:
    """Refuse (unless forced) a host the lock's stack cannot run on; otherwise run, stream, and record.

    `queued`: the record `envlock submit` left for a batch job; the run keeps its id, folder and scheduler facts.
    `tracking`: an MLflow run is started (or reused) and tagged before the launch, continued inside the container,
    and ended with the command's outcome.
    """
    stack = lock.target(platform).cuda
    notes = enforce(check_host(stack, host), request.force)
    gpus = request.gpus if request.gpus is not None else (host.is_gpu_host and stack.kind == "cuda")
    run_id = queued.run_id if queued else new_run_id()
    names = (*request.pass_env, *(CLIENT_SETTINGS if tracking else ()))  # the MLflow client's credentials, by name
    passed = {name: os.environ[name] for name in names if name in os.environ}
    record = new_record(
        run_id,
        "running",
        request,
        image,
        lock,
        platform=platform,
        git=git.as_dict(),
        host=host.as_dict(),
        passed_env=sorted(passed),
        notes=notes,
        scheduler=queued.scheduler if queued else None,
        container=queued.container if queued else None,
    )
    tracked = None
    if tracking:
        tags = stack_tags(
            run_id=run_id,
            image_id=image.image_id,
            repo_digests=list(image.repo_digests),
            lock_hash=lock.lock_hash,
            platform=platform,
            cuda=stack.as_dict(),
            host=record.host,
            git=record.git,
            command=record.command,
            seed=request.seed,
            scheduler=record.scheduler,
        )
        tracked = tracking.tracker.start(tracking.experiment, run_id, tracking.reuse, tags)
        record = replace(record, tracking=tracked.as_dict())
    if queued:
        store.begin(record, git.diff)
    else:
        store.start(record, lock_text, git.diff)
    launch = LaunchSpec(
        image_id=image.image_id,
        command=list(request.command),
        name=record.container,
        project_dir=project_dir,
        environment={**record.environment, **passed, **(tracked.environment if tracked else {})},
        user=f"{os.getuid()}:{os.getgid()}",
        gpus=gpus,
        gpu_devices=request.gpu_devices,
        labels={"dev.envlock.run-id": run_id, "dev.envlock.lock-hash": lock.lock_hash},
        mounts=(tracked.target.mount,) if tracked and tracked.target.mount else (),
        host_network=request.host_network or bool(tracked and tracked.target.host_network),
    )
    with store.log_path(run_id).open("ab") as log:

        def tee(stream: str, data: bytes) -> None:
            log.write(data)
            log.flush()
            output(stream, data)

        try:
            code = launcher.run(launch, tee)
        except KeyboardInterrupt:
            store.save(replace(record, status="interrupted", ended=now(), exit_code=130))
            _end_quietly(tracking, tracked, "KILLED")
            raise
        except BaseException:
            store.save(replace(record, status="failed", ended=now()))
            _end_quietly(tracking, tracked, "FAILED")
            raise
    outputs = hash_outputs(project_dir, request.outputs)
    for path, digest in outputs.items():
        source = project_dir / path
        if digest and source.suffix.lower() in METRICS_SUFFIXES and source.stat().st_size <= METRICS_MAX_BYTES:
            saved = store.saved_output(run_id, path)
            saved.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, saved)
    finished = replace(
        record, status="finished" if code == 0 else "failed", ended=now(), exit_code=code, outputs=outputs
    )
    store.save(finished)
    if tracking and tracked:
        tracking.tracker.finish(tracked, status_of(code))
    return finished


def _end_quietly(tracking: Tracking | None, tracked: TrackedRun | None, status: str) -> None:
    """End the tracking run on the way out of a failure; the failure is what gets reported."""
    if tracking and tracked:
        with contextlib.suppress(EnvlockError):
            tracking.tracker.finish(tracked, status)
