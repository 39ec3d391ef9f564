"""`envlock run`: preflight the host against the lock, launch in the pinned image, record the run."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from envlock.codecs import project_path_problem
from envlock.engine.launch import WORKDIR, Launcher, LaunchSpec, determinism_env, home_env
from envlock.engine.runtimes import LOCK_HASH_LABEL, StreamSink
from envlock.errors import DiskFullError, EnvlockError, UsageError
from envlock.fsutil import (
    disk_full,
    is_disk_full,
    make_dirs_confined,
    no_space_is_an_error,
    resolves_inside,
    sha256_file,
    write_confined,
)
from envlock.image.catalog import PinnedImage
from envlock.image.staging import LOCAL_METADATA
from envlock.lock.lockfile import Lock
from envlock.paths import ProjectLayout
from envlock.run.gitstate import GitState
from envlock.run.hostprobe import HostState
from envlock.run.inputs import InputSet, StatCache, hash_inputs
from envlock.run.links import find_links, moved_inputs
from envlock.run.params import read_params
from envlock.run.preflight import Preflight, check_host, enforce, without_gpus
from envlock.run.records import RunRecord, RunStatus, RunStore, new_run_id, now
from envlock.run.schema import GitRecord, JobRecord, Link, ParamsRecord, RuntimeRecord
from envlock.run.tracking import CLIENT_SETTINGS, TrackedRun, Tracking, stack_tags, status_of

# Metrics files a run keeps a copy of, so a later run can be compared with them within a tolerance.
METRICS_SUFFIXES = (".json", ".csv")
METRICS_MAX_BYTES = 1 << 20
# The kernel stamps files from a coarse clock (a tick behind time.time_ns()): a directory output's files count as
# written during the run when modified no earlier than this before the launch.
MTIME_SLACK_NS = 50_000_000


class RunEvidence(Protocol):
    """The evidence writer the run core is handed (the composition root builds the real one): every run that ends
    — finished, failed or interrupted, whichever command started it — is attested through it."""

    @property
    def imports(self) -> tuple[str, ...]:
        """Modules it needs once the command has ended: imported from a thread while the engine starts the
        container, the time this process only waits for its answer."""

    def run_ended(self, run_dir: Path) -> None:
        """Attest the run whose record in `run_dir` is final (again, when its folder gained files since)."""


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    """What the user asked to run, and how (built by keyword: its booleans are the user's flags)."""

    command: list[str]
    seed: int = 0
    force: bool = False  # --force: a host the preflight refuses runs anyway, the record marked forced
    gpus: bool | None = None  # None: when the host has GPUs and the lock is CUDA
    outputs: tuple[str, ...] = ()
    pass_env: tuple[str, ...] = ()
    reproduces: str | None = None
    gpu_devices: tuple[str, ...] = ()  # only these GPUs (indices or UUIDs), e.g. the ones Slurm allotted the job
    settings: Mapping[str, str] = field(default_factory=dict)  # envlock-set variables (a job's rank), recorded
    host_network: bool = False  # share the host's network (a multi-node job: NCCL between nodes)
    inputs: tuple[str, ...] = ()  # files or directories the command reads, relative to the project: hashed first
    chain: str | None = None  # the chain re-run this run is a step of (envlock reproduce --chain)
    params: Mapping[str, str] = field(default_factory=dict)  # --param KEY=VALUE, over the files' values
    param_files: tuple[str, ...] = ()  # params files (YAML, JSON, TOML) in the code, hashed and read key by key


@dataclass(frozen=True)
class LockedImage:
    """The software a run runs in: the lock (and its text, the copy kept with the run), the platform it runs for,
    and the lock's image."""

    lock: Lock
    lock_text: str
    platform: str
    image: PinnedImage


@dataclass(frozen=True)
class OwnMetadata:
    """The project's own packages versioned by VCS, as this run has them: their versions (recorded) and the folder
    of their dist-infos (mounted read-only on LOCAL_METADATA)."""

    versions: Mapping[str, str]
    folder: Path | None


@dataclass(frozen=True)
class RunFolders:
    """Where a run happens: the code it runs in, where its declared inputs are read, and the store of its record."""

    code: Path  # the project, or a reproduction's worktree
    store: RunStore
    inputs_from: Path | None = None  # None: the code (a reproduction runs in a worktree and reads the project's)

    @property
    def inputs(self) -> Path:
        """The folder the declared inputs are read from (and hashed in)."""
        return self.inputs_from or self.code


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """What a run happens in, fixed before it starts: the locked image, the host as probed, the code as git has it,
    the folders, the host's variables a run may pass, and the project's own package versions."""

    locked: LockedImage
    host: HostState
    git: GitState
    folders: RunFolders
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    own: OwnMetadata | None = None


def new_record(
    run_id: str,
    status: RunStatus,
    request: RunRequest,
    locked: LockedImage,
    *,
    passed_env: Sequence[str],
    scheduler: JobRecord | None = None,
    params: ParamsRecord | None = None,
) -> RunRecord:
    """A run's record as it is queued or starts, before the host is asked: what runs, in which image, with which
    settings (the params, when declared, reach the command as ENVLOCK_PARAMS, a JSON table)."""
    image, lock = locked.image, locked.lock
    return RunRecord(
        run_id=run_id,
        status=status,
        command=list(request.command),
        image_id=image.image_id,
        image_reference=image.reference,
        repo_digests=list(image.repo_digests),
        lock_hash=lock.lock_hash,
        platform=locked.platform,
        git=None,
        host=None,
        seed=request.seed,
        environment={
            **determinism_env(request.seed, image.image_id, lock.lock_hash),
            "ENVLOCK_RUN_ID": run_id,
            **home_env(),
            **request.settings,
            **({"ENVLOCK_PARAMS": json.dumps(dict(params.values), sort_keys=True)} if params else {}),
        },
        passed_env=list(passed_env),
        forced=False,
        preflight=[],
        started=now(),
        container=f"envlock-run-{run_id}",
        envlock_pid=os.getpid(),
        reproduces=request.reproduces,
        scheduler=scheduler,
        declared_outputs=list(request.outputs),
        chain=request.chain,
        params=params,
    )


def project_outputs(project_dir: Path, outputs: tuple[str, ...]) -> tuple[str, ...]:
    """The declared outputs as paths relative to the project; one outside it (absolute, `..`, a link out) is refused."""
    root = project_dir.resolve()
    kept: list[str] = []
    outside: list[str] = []
    for declared in outputs:
        resolved = (root / declared).resolve()  # an absolute `declared` replaces root: checked like any other
        # Inside the project, and a name the record's path rule reads back (no backslash: codecs' one rule).
        if (
            resolved == root
            or not resolved.is_relative_to(root)
            or project_path_problem(resolved.relative_to(root).as_posix())
        ):
            outside.append(declared)
        else:
            kept.append(resolved.relative_to(root).as_posix() if Path(declared).is_absolute() else declared)
    if outside:
        raise UsageError(
            f"--output {', '.join(outside)}: outputs must be files or folders inside the project ({root}), "
            "named with / between names",
            hint="write the output inside the project (e.g. outputs/model.pt) and name it relative to it",
        )
    return tuple(dict.fromkeys(kept))


def hash_outputs(project_dir: Path, outputs: tuple[str, ...], since_ns: int | None = None) -> dict[str, str | None]:
    """sha256 of each declared output; a directory counts as every file in it written during the run (modified at
    or after `since_ns`: a directory that accumulates, like mlruns/, keeps older runs' files). None: not produced.
    Only files that lie inside the project, links followed: a link the command made to a file elsewhere on the host
    (a bundle's code, in its container) is not produced, and nothing reads, keeps or compares what it points at."""
    hashes: dict[str, str | None] = {}

    def inside(file: Path) -> bool:
        return file.is_file() and resolves_inside(project_dir, file.relative_to(project_dir).as_posix())

    for declared in outputs:
        path = project_dir / declared
        if path.is_dir() and resolves_inside(project_dir, declared):
            for file in sorted(p for p in path.rglob("*") if inside(p)):
                if since_ns is None or file.stat().st_mtime_ns >= since_ns:
                    hashes[file.relative_to(project_dir).as_posix()] = sha256_file(file)
        else:
            hashes[declared] = sha256_file(path) if inside(path) else None
    return hashes


@dataclass(frozen=True)
class RunPlan:
    """Everything decided before anything happens: the record as it starts, and what the container gets."""

    record: RunRecord
    launch: LaunchSpec
    passed: dict[str, str]  # the host variables passed in, by name (values never recorded)


def plan_run(
    context: RunContext,
    request: RunRequest,
    *,
    queued: RunRecord | None = None,
    inputs: InputSet | None = None,
    runtime: RuntimeRecord | None = None,
    params: ParamsRecord | None = None,
) -> RunPlan:
    """Preflight (refusing unless forced), GPUs, environment, the record and the launch: decisions, no effects.

    `--no-gpus` on a CUDA lock needs no --force: nothing of the host's driver is used, the preflight's refusal
    becomes a note naming the floor. Declared inputs are mounted read-only where the command expects them."""
    locked, host, own = context.locked, context.host, context.own
    cuda = locked.lock.target(locked.platform).cuda
    if request.gpus is False and cuda.kind == "cuda":
        preflight = Preflight(notes=(without_gpus(cuda),))
    else:
        preflight = enforce(check_host(cuda, host), request.force)
    gpus = request.gpus if request.gpus is not None else (host.is_gpu_host and cuda.kind == "cuda")
    run_id = queued.run_id if queued else new_run_id()
    passed = {name: context.environ[name] for name in request.pass_env if name in context.environ}
    scheduler = queued.scheduler if queued else None
    record = new_record(
        run_id, "running", request, locked, passed_env=sorted(passed), scheduler=scheduler, params=params
    )
    record = replace(
        record,
        git=GitRecord.of(context.git),
        host=host,
        forced=preflight.forced,
        preflight=list(preflight.notes),
        container=(queued.container if queued else None) or record.container,
        inputs=inputs,
        gpus=gpus,
        runtime=runtime,
        package_versions=dict(own.versions) if own else {},
    )
    return RunPlan(record, _launch(context, request, record, passed), passed)


def _launch(context: RunContext, request: RunRequest, record: RunRecord, passed: Mapping[str, str]) -> LaunchSpec:
    """What the container gets: the record's image, command, environment and GPUs, the passed host variables, and
    the declared inputs (and the own packages' metadata) mounted read-only where the command expects them."""
    source, own, inputs = context.folders.inputs, context.own, record.inputs
    present = [p.rstrip("/") for p in (inputs.paths if inputs else ()) if p not in (inputs.missing if inputs else ())]
    return LaunchSpec(
        image_id=record.image_id,
        command=list(request.command),
        name=record.container,
        project_dir=context.folders.code,
        environment={**record.environment, **passed},
        user=f"{os.getuid()}:{os.getgid()}",
        gpus=bool(record.gpus),
        gpu_devices=request.gpu_devices,
        labels={"dev.envlock.run-id": record.run_id, LOCK_HASH_LABEL: record.lock_hash},
        host_network=request.host_network,
        read_only=(
            *((source / path, f"{WORKDIR}/{path}") for path in present),
            *(((own.folder, LOCAL_METADATA),) if own and own.folder else ()),
        ),
    )


def _tracked(plan: RunPlan, context: RunContext, tracking: Tracking) -> tuple[RunPlan, TrackedRun]:
    """Start (or continue) the MLflow run, tagged with the stack; the container is told about it, and gets the
    MLflow client's credentials from the host (passed by name, as --env does)."""
    record = plan.record
    cuda = context.locked.lock.target(record.platform).cuda
    tracked = tracking.tracker.start(tracking.experiment, record.run_id, tracking.reuse, stack_tags(record, cuda))
    passed = {
        **plan.passed,
        **{name: context.environ[name] for name in CLIENT_SETTINGS if name in context.environ},
    }
    launch = replace(
        plan.launch,
        environment={**plan.launch.environment, **passed, **tracked.environment},
        mounts=(tracked.target.mount,) if tracked.target.mount else (),
        host_network=plan.launch.host_network or tracked.target.host_network,
    )
    record = replace(record, passed_env=sorted(passed), tracking=tracked.recorded())
    return RunPlan(record, launch, passed), tracked


def run_in_image(
    context: RunContext,
    request: RunRequest,
    *,
    launcher: Launcher,
    output: StreamSink,
    evidence: RunEvidence,
    queued: RunRecord | None = None,
    tracking: Tracking | None = None,
) -> RunRecord:
    """Refuse (unless forced) a host the lock's stack cannot run on; otherwise run, stream, record, and attest
    the run through `evidence` however it ends.

    `queued`: the record `envlock submit` left for a batch job; the run keeps its id, folder and scheduler facts.
    `tracking`: an MLflow run is started (or reused) and tagged before the launch, continued inside the container,
    and ended with the command's outcome.
    The declared inputs (read from `context.folders.inputs`) are hashed before anything starts; a missing one is
    refused unless this is a reproduction (whose verdict then names it). Each input whose bytes an earlier run
    wrote is linked to that run in the record as it starts; the inputs are hashed again at the end and the run
    marked tainted when any moved meanwhile.
    """
    folders = context.folders
    store = folders.store
    inputs = _declared_inputs(request, folders)
    links = _links(inputs, store, request.chain, queued)
    plan = plan_run(
        context, request, queued=queued, inputs=inputs, runtime=RuntimeRecord.of(launcher.runtime()),
        params=read_params(folders.code, request.param_files, request.params),
    )  # fmt: skip
    tracked = None
    if tracking:
        plan, tracked = _tracked(plan, context, tracking)
    record = replace(plan.record, links=links)
    with no_space_is_an_error(f"starting run {record.run_id} (nothing was run)", (store.project_dir,)):
        if queued:
            store.begin(record, context.git.diff)
        else:
            store.start(record, context.locked.lock_text, context.git.diff)
    since_ns = time.time_ns() - MTIME_SLACK_NS
    _import_meanwhile(evidence.imports)
    with _ending_on_failure(record, store, tracking, tracked, evidence):
        code = _launch_logged(plan.launch, launcher, store.log_path(record.run_id), output)
        finished = _finished(record, code, folders.code, request.outputs, store, since_ns=since_ns)
        if inputs:
            after = hash_inputs(folders.inputs, inputs.paths, StatCache(ProjectLayout(store.project_dir).input_stats))
            finished = replace(finished, tainted=moved_inputs(inputs, after))
        store.save(finished)
    evidence.run_ended(store.directory(record.run_id))
    if tracking and tracked:
        tracking.tracker.finish(tracked, status_of(finished))
    return finished


def _import_meanwhile(modules: tuple[str, ...]) -> None:
    """Import these modules in a daemon thread; a failure there is left for the import that needs the module."""

    def load() -> None:
        with contextlib.suppress(BaseException):
            for module in modules:
                importlib.import_module(module)

    threading.Thread(target=load, name="envlock-imports", daemon=True).start()


def _declared_inputs(request: RunRequest, folders: RunFolders) -> InputSet | None:
    """The declared inputs hashed (through the stat cache) before anything starts; a missing one is refused unless
    this is a reproduction, whose verdict names it."""
    if not request.inputs:
        return None
    source = folders.inputs
    inputs = hash_inputs(source, request.inputs, StatCache(ProjectLayout(folders.store.project_dir).input_stats))
    if inputs.missing and request.reproduces is None:
        raise UsageError(
            f"input {inputs.missing[0]!r} does not exist in {source}",
            hint="--input and `inputs = [...]` name files or directories inside the project",
            details=tuple(f"input {m!r} does not exist either" for m in inputs.missing[1:]),
        )
    _mount_points(folders.code, source, inputs)
    return inputs


def _links(inputs: InputSet | None, store: RunStore, chain: str | None, queued: RunRecord | None) -> tuple[Link, ...]:
    """The inputs' links to the runs that wrote them, from the records as they are now (this run's own, a queued
    job's, left out); unreadable records are skipped (they cannot vouch for anything)."""
    if not inputs or not inputs.files:
        return ()
    earlier = [r for r in store.all() if queued is None or r.run_id != queued.run_id]
    return find_links(inputs, earlier, chain)


def _launch_logged(launch: LaunchSpec, launcher: Launcher, log_path: Path, output: StreamSink) -> int:
    """Run the container; its output goes to the terminal and to the run's log as it comes."""
    with log_path.open("ab") as log:

        def tee(stream: str, data: bytes) -> None:
            try:
                log.write(data)
                log.flush()
            except OSError as exc:  # a write to an open file names no file: the log is named here
                raise OSError(exc.errno, exc.strerror, str(log_path)) from exc
            output(stream, data)

        return launcher.run(launch, tee)


@contextlib.contextmanager
def _ending_on_failure(
    record: RunRecord,
    store: RunStore,
    tracking: Tracking | None,
    tracked: TrackedRun | None,
    evidence: RunEvidence,
) -> Iterator[None]:
    """A run that did not come back (Ctrl-C, the engine failing) is recorded as interrupted or failed, attested,
    and its tracking run ended the same way, before the failure goes on."""
    try:
        yield
    except KeyboardInterrupt:
        interrupted = replace(record, status="interrupted", ended=now(), exit_code=130)
        store.save(interrupted)
        _attest_quietly(evidence, store.directory(record.run_id))
        _end_quietly(tracking, tracked, interrupted)
        raise
    except BaseException as exc:
        if not is_disk_full(exc):
            failed = replace(record, status="failed", ended=now())
            store.save(failed)
            _attest_quietly(evidence, store.directory(record.run_id))
            _end_quietly(tracking, tracked, failed)
            raise
        # A full disk (its log, saved files, outputs or record): one line, the record marked failed with it.
        assert isinstance(exc, OSError)  # noqa: S101  (is_disk_full says so; for the type checker)
        full = disk_full(f"recording run {record.run_id}", exc, (store.directory(record.run_id),))
        failed = replace(record, status="failed", ended=now(), error=full.message)
        try:
            store.save(failed)
        except OSError as again:
            raise DiskFullError(
                f"{full.message}; the run record could not be marked failed either (it still says running)",
                hint=full.hint,
            ) from again
        _attest_quietly(evidence, store.directory(record.run_id))
        _end_quietly(tracking, tracked, failed)
        raise full from exc


def _attest_quietly(evidence: RunEvidence, run_dir: Path) -> None:
    """Attest a run on the way out of a failure; the failure is what gets reported."""
    with contextlib.suppress(EnvlockError, OSError):
        evidence.run_ended(run_dir)


def _mount_points(project_dir: Path, source: Path, inputs: InputSet) -> None:
    """In a worktree that lacks them (gitignored data), the inputs' mount points: made here as the caller, so the
    engine does not make them as root; never through a link (a dangling one would lead the write elsewhere)."""
    if project_dir.resolve() == source.resolve():
        return
    for path in inputs.paths:
        if path in inputs.missing or (project_dir / path).exists():
            continue
        if (source / path).is_dir():
            make_dirs_confined(project_dir, path.rstrip("/"))
        else:
            write_confined(project_dir, path, b"")


def _finished(
    record: RunRecord, code: int, project_dir: Path, outputs: tuple[str, ...], store: RunStore, *, since_ns: int
) -> RunRecord:
    """The record at the end: the outputs hashed, small metrics files kept for comparisons within a tolerance,
    the log hashed (what is compared when no output is declared)."""
    hashes = hash_outputs(project_dir, outputs, since_ns)
    for path, digest in hashes.items():
        source = project_dir / path
        if digest and source.suffix.lower() in METRICS_SUFFIXES and source.stat().st_size <= METRICS_MAX_BYTES:
            saved = store.saved_output(record.run_id, path)
            saved.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, saved)
    status: RunStatus = "finished" if code == 0 else "failed"
    log = store.log_path(record.run_id)
    log_sha256 = sha256_file(log) if log.is_file() else None
    return replace(record, status=status, ended=now(), exit_code=code, outputs=hashes, log_sha256=log_sha256)


def _end_quietly(tracking: Tracking | None, tracked: TrackedRun | None, ended: RunRecord) -> None:
    """End the tracking run as the record ended it, on the way out of a failure; the failure is what gets
    reported."""
    if tracking and tracked:
        with contextlib.suppress(EnvlockError):
            tracking.tracker.finish(tracked, status_of(ended))
