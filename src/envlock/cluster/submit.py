"""`envlock submit --slurm`: a run record queued with its batch job, run on the allocated node, settled from Slurm.

Submit host: the record (status `queued`, the lock copy, the job script) is written before the job may start —
the job is submitted on hold and released only once its id is in the record. Nodes: `envlock run-submitted`, one
task per allocated node (srun), probes its node, restores the image by ID and runs exactly as `envlock run` does;
rank 0 into the run's record, the other nodes into records of their own under nodes/<rank>/. Anywhere: `envlock
runs` asks Slurm about jobs whose record is not final and settles the ones Slurm ended without envlock's task
finishing them (cancelled while queued, killed at the time limit, node failure).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from envlock.cluster.slurm import JobState, Slurm, batch_script
from envlock.errors import EnvlockError, RegistryError, RunRecordError, SchedulerError
from envlock.fsutil import atomic_write_text
from envlock.lock import lockfile
from envlock.lock.credentials import redact
from envlock.lock.lockfile import Lock
from envlock.lock.spec import Spec
from envlock.lock.targets import host_platform
from envlock.report import Report
from envlock.run.records import RunRecord, RunStatus, RunStore, new_run_id, now
from envlock.run.runner import LockedImage, RunEvidence, RunRequest, new_record
from envlock.run.schema import JobRecord, JobRequest, TrackingRequest
from envlock.run.service import RunTools, lock_image
from envlock.run.tracking import TrackingSettings

# What Slurm tells a job about itself, passed into the container (the training code may want its rank or job id).
SLURM_FACTS = (
    "SLURM_JOB_ID",
    "SLURM_JOB_NAME",
    "SLURM_JOB_NODELIST",
    "SLURM_JOB_NUM_NODES",
    "SLURM_NNODES",
    "SLURM_NODEID",
    "SLURM_PROCID",
    "SLURM_CPUS_ON_NODE",
    "SLURM_GPUS_ON_NODE",
)
# Slurm job states after which a run that never finished its record counts as interrupted (not failed).
STOPPED_STATES = frozenset({"CANCELLED", "DEADLINE", "PREEMPTED", "TIMEOUT"})


@dataclass(frozen=True)
class Submission:
    """What `envlock submit` was asked: the command and the sbatch options, as given."""

    request: RunRequest
    sbatch_options: tuple[str, ...]
    job_name: str
    tracking: TrackingSettings | None = None  # MLflow: uri, experiment, reuse (the node starts the run)
    runtime: str | None = None  # what the nodes run the image with (None: docker)
    push: bool = False  # the node publishes the run's evidence when it finished (envlock push)


def request_facts(
    request: RunRequest, tracking: TrackingSettings | None = None, runtime: str | None = None, *, push: bool = False
) -> JobRequest:
    """The parts of a request the node needs that the record does not already hold (the URI without credentials);
    what was not asked for is left out (older readers see the keys they know)."""
    mlflow = TrackingRequest(redact(tracking.uri), tracking.experiment, tracking.reuse) if tracking else None
    return JobRequest(
        request.outputs,
        request.force,
        request.gpus,
        mlflow,
        runtime,
        inputs=request.inputs or None,
        params=dict(request.params) or None,
        param_files=request.param_files or None,
        push=push or None,
    )


@dataclass(frozen=True)
class NodeRole:
    """Where this task sits in its job: its rank among the nodes, and where rank 0 listens."""

    rank: int
    nodes: int
    master_addr: str
    master_port: int

    @property
    def settings(self) -> dict[str, str]:
        """What the container is told, for a distributed launcher on every node (torchrun --nnodes
        $ENVLOCK_NNODES --node-rank $ENVLOCK_NODE_RANK --master-addr $MASTER_ADDR --master-port $MASTER_PORT)."""
        return {
            "ENVLOCK_NODE_RANK": str(self.rank),
            "ENVLOCK_NNODES": str(self.nodes),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def node_rank(environ: Mapping[str, str]) -> int:
    """This task's node rank in its job (srun: one task per node, so the node's index)."""
    return int(environ.get("SLURM_NODEID") or environ.get("SLURM_PROCID") or "0")


def node_role(environ: Mapping[str, str], slurm: Slurm) -> NodeRole:
    """This task's role, from what srun tells it; rank 0's address from Slurm (its NodeAddr)."""
    nodes = int(environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES") or "1")
    rank = node_rank(environ)
    port = 20000 + int(environ.get("SLURM_JOB_ID") or "0") % 20000  # one per job, the same on every node
    if nodes == 1:
        return NodeRole(0, 1, "127.0.0.1", port)
    first = slurm.hostnames(environ["SLURM_JOB_NODELIST"])[0]
    return NodeRole(rank, nodes, slurm.node_address(first), port)


def submitted_request(record: RunRecord, environ: Mapping[str, str], role: NodeRole) -> RunRequest:
    """The request a queued record stands for, on a node: the user's variables plus Slurm's facts about the job,
    the node's rank, and only the GPUs Slurm allotted (SLURM_STEP_GPUS / SLURM_JOB_GPUS) when it allotted some.
    Several nodes share the host network, so NCCL and the rendezvous reach each other."""
    facts = record.scheduler.request if record.scheduler else JobRequest()
    allotted = environ.get("SLURM_STEP_GPUS") or environ.get("SLURM_JOB_GPUS") or ""
    return RunRequest(
        command=list(record.command),
        seed=record.seed,
        force=facts.force,
        gpus=facts.gpus,
        outputs=facts.outputs,
        pass_env=(*record.passed_env, *(name for name in SLURM_FACTS if name in environ)),
        gpu_devices=tuple(d for d in allotted.split(",") if d),
        settings=role.settings,
        host_network=role.nodes > 1,
        inputs=facts.inputs or (),
        params=facts.params or {},
        param_files=facts.param_files or (),
    )


def submitted_tracking(record: RunRecord, environ: Mapping[str, str]) -> TrackingSettings | None:
    """The MLflow settings the submitter asked for; its credentials come from the job's environment (sbatch
    exports the submitter's), never from the record."""
    recorded = record.scheduler.request.mlflow if record.scheduler else None
    if recorded is None:
        return None
    exported = environ.get("MLFLOW_TRACKING_URI", "")
    uri = exported if exported and redact(exported) == recorded.uri else recorded.uri
    return TrackingSettings(uri, recorded.experiment, recorded.reuse)


def submit_run(
    locked: LockedImage,
    submission: Submission,
    *,
    project_dir: Path,
    store: RunStore,
    slurm: Slurm,
    task: Callable[[str], list[str]],
) -> RunRecord:
    """Queue the run: record, job script, `sbatch --hold`, job id into the record, release. All or nothing: on any
    failure the job is cancelled and the run's folder removed."""
    if submission.push and not locked.image.repo_digests:
        raise RegistryError(
            "--push: the lock's image was never pushed, so the node would have nothing to publish the run beside",
            hint="envlock build --push (registry from [tool.envlock]) or envlock build --registry HOST/NAMESPACE, "
            "then submit again",
        )
    run_id = new_run_id()
    request = submission.request
    job = JobRecord(
        kind="slurm",
        job_id=None,
        options=submission.sbatch_options,
        submitted=now(),
        request=request_facts(request, submission.tracking, submission.runtime, push=submission.push),
        submit_host=socket.gethostname(),
    )
    # git and the host are taken on the node, when the job starts
    record = new_record(run_id, "queued", request, locked, passed_env=sorted(request.pass_env), scheduler=job)
    directory = store.create(run_id, locked.lock_text)
    job_id = None
    try:
        script = directory / "job.sh"
        text = batch_script(
            job_name=submission.job_name,
            project_dir=project_dir.resolve(),
            run_dir=directory.resolve(),
            task=task(run_id),
        )
        atomic_write_text(script, text)
        store.save(record)
        job_id = slurm.submit_held(script, submission.sbatch_options)
        queued = replace(record, scheduler=replace(job, job_id=job_id))
        store.save(queued)
        slurm.release(job_id)
    except BaseException:
        if job_id is not None:
            with contextlib.suppress(SchedulerError):  # the error that brought us here is the one to report
                slurm.cancel(job_id)
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return queued


def run_submitted(
    store: RunStore, run_id: str, rank: int, start: Callable[[RunRecord, RunStore], RunRecord]
) -> RunRecord:
    """A job's task on the node of `rank`: run the queued record once, into the run's record (rank 0) or the node's
    own (nodes/<rank>/). Whatever stops it before the command ran (preflight refusal, engine down, image not
    restorable, cancellation) is written into that record, then raised."""
    main = store.load(run_id)
    if main.scheduler is None:
        raise RunRecordError(f"run {main.run_id} was not submitted to a scheduler", hint="envlock runs lists it")
    if rank == 0:
        target, queued = store, main
        ran = main.status != "queued"
    else:  # the node's own record, made from the run's; one already there means this node's task ran before
        target = store.for_node(rank)
        queued = replace(main, status="queued", container=f"{main.container}-{rank}", tracking=None)
        ran = target.directory(main.run_id).exists()
    if ran:
        raise RunRecordError(
            f"run {main.run_id} already started on node rank {rank}: a submitted run runs once",
            hint="submit it again: envlock submit --slurm -- COMMAND",
        )
    if rank > 0:
        target.save(queued)
    try:
        return start(queued, target)
    except BaseException as exc:
        current = target.load(queued.run_id)
        if current.status == "queued":
            stopped = isinstance(exc, KeyboardInterrupt)
            if stopped:
                why = "the job was cancelled before its command started"
            elif isinstance(exc, EnvlockError):
                why = "; ".join((exc.message, *exc.details))
            else:
                why = f"{exc.__class__.__name__}: {exc}"
            target.save(replace(current, status="interrupted" if stopped else "failed", ended=now(), error=why))
        raise


def on_node(record: RunRecord, environ: Mapping[str, str], role: NodeRole) -> RunRecord:
    """The queued record with the node's facts added: where it runs (Slurm's node name and the host), its rank,
    and which nodes the job has."""
    if record.scheduler is None:
        raise RunRecordError(f"run {record.run_id} was not submitted to a scheduler", hint="envlock runs lists it")
    node = environ.get("SLURMD_NODENAME") or socket.gethostname()
    job = record.scheduler.at_node(node, socket.gethostname(), role.rank, environ.get("SLURM_JOB_NODELIST", ""))
    return replace(record, scheduler=job)


def settle_jobs(
    store: RunStore,
    records: list[RunRecord],
    slurm: Slurm,
    remove_container: Callable[[str], None],
    evidence: RunEvidence,
) -> tuple[dict[str, JobState], list[RunRecord]]:
    """Ask Slurm about every submitted run whose record is not final: (live states by run id, records settled now).

    A job Slurm has ended, or no longer knows, whose record still says queued/running never reached the end of
    envlock's task (cancelled while queued, SIGKILLed at the time limit, node lost): its record is closed here.
    """
    live: dict[str, JobState] = {}
    settled: list[RunRecord] = []
    for record in records:
        job_id = record.scheduler.job_id if record.scheduler else None
        if not job_id:
            continue
        open_nodes = [r for r, n in store.node_records(record.run_id).items() if n.status in ("queued", "running")]
        if record.status not in ("queued", "running") and not open_nodes:
            continue
        state = slurm.state(job_id)
        if state is not None and not state.final:
            live[record.run_id] = state
            continue
        closed = _close(store, record.run_id, job_id, state, remove_container)
        if closed is not None:
            evidence.run_ended(store.directory(record.run_id))  # whoever settles a run attests it
            settled.append(closed)
        for rank in open_nodes:
            node = store.for_node(rank)
            if _close(node, record.run_id, job_id, state, remove_container) is not None:
                evidence.run_ended(node.directory(record.run_id))
    return live, settled


def _close(
    store: RunStore, run_id: str, job_id: str, state: JobState | None, remove_container: Callable[[str], None]
) -> RunRecord | None:
    """Close a record Slurm's end of the job left open; None when the task finished it after all."""
    current = store.load(run_id)  # the task may have finished it while we asked
    if current.status not in ("queued", "running"):
        return None
    status: RunStatus
    if state is None:
        status, why = "interrupted", f"Slurm no longer knows job {job_id} and envlock's task never finished it"
    else:
        status = "interrupted" if state.state in STOPPED_STATES else "failed"
        why = f"Slurm job {job_id} ended {state.state} before envlock's task finished the run"
    job = current.scheduler
    if current.status == "running" and job is not None and job.host == socket.gethostname():
        remove_container(current.container)
    ended = replace(job, state=state.state if state else "UNKNOWN") if job else None
    closed = replace(current, status=status, ended=now(), error=why, scheduler=ended)
    store.save(closed)
    return closed


def describe(record: RunRecord, live: Mapping[str, JobState]) -> str:
    """Where a run runs, for listings: `local`, or `slurm 42` (`slurm 42, 4 nodes`) with Slurm's reason while it
    waits."""
    scheduler = record.scheduler
    if not scheduler:
        return "local"
    where = f"{scheduler.kind} {scheduler.job_id or '-'}"
    nodes = record.environment.get("ENVLOCK_NNODES", "1")
    if nodes != "1":
        where += f", {nodes} nodes"
    state = live.get(record.run_id)
    if state and state.state == "PENDING" and state.reason not in ("", "None"):
        where += f" ({state.reason})"
    return where


def sbatch_options_of(args: Sequence[str]) -> tuple[str, ...]:
    """The sbatch options as given, refusing the ones envlock owns (the script and its output are envlock's)."""
    owned = ("--parsable", "--hold", "-H", "--wrap")
    for arg in args:
        if arg.split("=", 1)[0] in owned:
            raise SchedulerError(
                f"sbatch option {arg} is envlock's own: it submits on hold and writes the job script itself",
                hint="leave it out; every other sbatch option (e.g. -p gpu --time=2:00:00 --gres=gpu:1) is passed on",
            )
    return tuple(args)


def settle(
    store: RunStore,
    records: list[RunRecord],
    slurm: Callable[[], Slurm],
    remove_container: Callable[[str], None],
    report: Report,
    *,
    evidence: RunEvidence,
) -> tuple[dict[str, JobState], dict[str, RunRecord]]:
    """Close the records of runs that lost their envlock: local ones whose envlock was killed (their containers
    removed), batch jobs Slurm ended without envlock's task finishing them. Returns Slurm's state of the jobs still
    queued or running, and the records closed now, by run id. Slurm is asked only when a job's record is open."""
    closed: dict[str, RunRecord] = {}
    for orphan in store.settle_orphans(remove_container, records):
        report(f"run {orphan.run_id} had lost its envlock (killed): marked interrupted")
        evidence.run_ended(store.directory(orphan.run_id))
        closed[orphan.run_id] = orphan
    if not any(r.scheduler and r.status in ("queued", "running") for r in records):
        return {}, closed
    try:
        live, settled = settle_jobs(store, records, slurm(), remove_container, evidence)
    except EnvlockError as exc:
        report(f"warning: could not ask Slurm about queued/running jobs ({exc.message}): showing their last record")
        return {}, closed
    for job in settled:
        report(f"run {job.run_id}: {job.error}: marked {job.status}")
        closed[job.run_id] = job
    return live, closed


def submit_project(
    spec: Spec, lock: Lock, submission: Submission, *, slurm: Slurm, tools: RunTools, python: str
) -> RunRecord:
    """`envlock submit --slurm`: the lock's image found or built here, then the run queued; each node's task runs
    `python -m envlock run-submitted RUN` with the same interpreter (a venv shared with the nodes)."""
    image = lock_image(
        lock, spec.name, project_dir=spec.project_dir, index_urls=[spec.index_url, *spec.extra_index_urls], tools=tools
    )
    if not image.repo_digests:
        tools.report(
            "note: the image was never pushed: a node that does not have it rebuilds it from the lock "
            "(envlock build --push lets nodes pull it by digest)"
        )
    project_dir = spec.project_dir.resolve()

    def task(run_id: str) -> list[str]:
        return [python, "-m", "envlock", "run-submitted", run_id, "--project", str(project_dir)]

    return submit_run(
        LockedImage(lock, lockfile.read_text(spec.lock_path), host_platform(), image),
        submission,
        project_dir=project_dir,
        store=RunStore(spec.project_dir),
        slurm=slurm,
        task=task,
    )
