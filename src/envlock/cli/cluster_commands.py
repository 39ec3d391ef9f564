"""`envlock submit --slurm`, its node task (`run-submitted`), `export k8s`: the same run on a cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from envlock.cli.options import (
    EnvOpt,
    FileOutOpt,
    GpusOpt,
    InputsOpt,
    MlflowOpt,
    NoMlflowOpt,
    OldOutputOpt,
    OutputsOpt,
    ParamOpt,
    PlatformOpt,
    ProjectOpt,
    RuntimeOpt,
    SeedOpt,
    print_or_write,
)
from envlock.cli.root import CommandExited, app, export_app
from envlock.cli.wiring import invocation_of, wiring_of
from envlock.errors import UsageError
from envlock.paths import LOCK_FILE

if TYPE_CHECKING:
    from envlock.run.records import RunRecord, RunStore


def split_submit(args: list[str]) -> tuple[list[str], list[str], list[str]]:
    """`envlock submit [envlock options] --slurm [sbatch options] -- CMD` → (what typer parses, sbatch's options,
    the command), split before typer sees it: sbatch's -o, -e, -C, --gpus would collide with envlock's."""
    head, command = (args[: args.index("--")], args[args.index("--") + 1 :]) if "--" in args else (args, [])
    if "--slurm" not in head:
        return head, [], command
    at = head.index("--slurm") + 1
    if "--help" in head[at:]:  # `envlock submit --slurm --help` asks envlock, not sbatch
        return [*head[:at], "--help"], [], command
    return head[:at], head[at:], command


@app.command("submit")
def submit_command(
    ctx: typer.Context,
    project: ProjectOpt = Path(),
    slurm: Annotated[
        bool, typer.Option("--slurm", help="Submit to Slurm; the options after it, up to --, go to sbatch.")
    ] = False,
    seed: SeedOpt = 0,
    force: Annotated[bool, typer.Option("--force", help="Run although the node fails the preflight.")] = False,
    gpus: GpusOpt = None,
    output: OutputsOpt = None,
    inputs: InputsOpt = None,
    param: ParamOpt = None,
    env: EnvOpt = None,
    mlflow: MlflowOpt = None,
    no_mlflow: NoMlflowOpt = False,
    runtime: RuntimeOpt = None,
    push: Annotated[
        bool,
        typer.Option("--push", help="When the job finished, its node publishes the run's evidence (envlock push)."),
    ] = False,
) -> None:
    """Submit a batch job that runs a command in the lock's image on a cluster node, with a run record.

    envlock submit [options] --slurm [sbatch options] -- python train.py
    """
    from envlock.cluster.submit import Submission, sbatch_options_of, submit_project  # noqa: PLC0415
    from envlock.lock.project import check as check_lock  # noqa: PLC0415
    from envlock.lock.spec import load_spec  # noqa: PLC0415
    from envlock.run.params import parse_given  # noqa: PLC0415
    from envlock.run.runner import RunRequest, project_outputs  # noqa: PLC0415
    from envlock.run.tracking import open_tracking, tracking_settings  # noqa: PLC0415

    invocation = invocation_of(ctx)
    wiring = invocation.wiring
    if not slurm:
        raise UsageError("choose the scheduler to submit to", hint="envlock submit --slurm [sbatch options] -- CMD")
    if not invocation.submit_command:
        raise UsageError("no command to run: it goes after --", hint="envlock submit --slurm -p gpu -- python train.py")
    sbatch = sbatch_options_of(list(invocation.sbatch_args))
    given = parse_given(param or [])
    wiring.slurm.ping()
    spec = load_spec(project)
    wiring.register_root(spec.project_dir, spec.name)
    chosen = wiring.choose_runtime(runtime, spec.runtime)
    outputs = tuple(dict.fromkeys(project_outputs(spec.project_dir, (*spec.outputs, *(output or [])))))
    locked = check_lock(spec)
    settings = tracking_settings(mlflow, no_mlflow, spec.name, wiring.environ)
    open_tracking(settings, wiring.tracker)  # an unusable or unreachable store is refused now, not on the node
    # As `envlock run`: the project's declared inputs and params files with the ones given, hashed on the node
    # when the job starts (the data a cluster job reads is bound into its record like a local run's).
    read = spec.run_inputs_with(inputs)
    request = RunRequest(
        command=list(invocation.submit_command),
        seed=seed,
        force=force,
        gpus=gpus,
        outputs=outputs,
        pass_env=tuple(env or ()),
        inputs=read,
        params=given,
        param_files=spec.params,
    )
    submission = Submission(request, sbatch, f"envlock-{spec.name}", settings, chosen, push)
    record = submit_project(
        spec, locked, submission, slurm=wiring.slurm, tools=wiring.run_tools(chosen), python=sys.executable
    )
    typer.echo(f"run {record.run_id}: queued as Slurm job {record.scheduler.job_id if record.scheduler else '-'}")
    wiring.say(f"follow it with `envlock runs`, wait for it with `envlock runs wait {record.run_id}`")


@app.command("run-submitted", hidden=True)
def run_submitted_command(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The queued run (its record was written by envlock submit).")],
    project: ProjectOpt = Path(),
) -> None:
    """A submitted job's task, on its node: probe, preflight, restore the image by ID, run, record."""
    from envlock.cluster.submit import (  # noqa: PLC0415
        node_rank,
        node_role,
        on_node,
        run_submitted,
        submitted_request,
        submitted_tracking,
    )
    from envlock.run.records import RunStore  # noqa: PLC0415
    from envlock.run.runner import RunFolders  # noqa: PLC0415
    from envlock.run.service import RecordedRun, run_recorded  # noqa: PLC0415
    from envlock.run.tracking import open_tracking  # noqa: PLC0415

    wiring = wiring_of(ctx)
    environ = wiring.environ
    store = RunStore(project)
    rank = node_rank(environ)

    def start(queued: RunRecord, target: RunStore) -> RunRecord:
        role = node_role(environ, wiring.slurm)
        chosen = wiring.choose_runtime(
            None, (queued.scheduler.request.runtime if queued.scheduler else None) or "docker"
        )
        # MLflow: rank 0 starts, tags and ends the run; the other nodes' containers are not told about it.
        tracking = open_tracking(submitted_tracking(queued, environ), wiring.tracker) if rank == 0 else None
        recorded = RecordedRun(
            record=queued,
            lock_path=store.directory(queued.run_id) / LOCK_FILE,
            folders=RunFolders(project, target),
        )
        return run_recorded(
            recorded,
            submitted_request(queued, environ, role),
            wiring.run_tools(chosen),
            queued=on_node(queued, environ, role),
            tracking=tracking,
        )

    record = run_submitted(store, run_id, rank, start)
    where = store.directory(record.run_id) if rank == 0 else store.for_node(rank).directory(record.run_id)
    wiring.say(f"run {record.run_id} (node rank {rank}): {record.status} (exit {record.exit_code}); record in {where}")
    asked = record.scheduler.request.push if record.scheduler else None
    if asked and rank == 0 and record.status == "finished" and record.exit_code == 0:
        from envlock.cli.publish_commands import publish  # noqa: PLC0415

        publish(wiring, project, record.run_id, None)
    raise CommandExited(record.exit_code or 0)


@export_app.command("k8s", context_settings={"allow_interspersed_args": False})
def export_k8s(
    command: Annotated[list[str], typer.Argument(help="The command, after --: envlock export k8s -- python train.py")],
    project: ProjectOpt = Path(),
    out: FileOutOpt = None,
    old_output: OldOutputOpt = None,
    platform: PlatformOpt = None,
    seed: SeedOpt = 0,
    gpus: Annotated[int | None, typer.Option("--gpus", help="nvidia.com/gpu to request (default: 1 if CUDA).")] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", help="The Job's namespace.")] = None,
    code_claim: Annotated[
        str | None, typer.Option("--code-claim", help="A PersistentVolumeClaim with the project, mounted at /work.")
    ] = None,
) -> None:
    """A Kubernetes Job (JSON, for kubectl apply -f) running the lock's pushed image by digest."""
    from envlock.cluster.k8s import KubeJobSpec, pushed_image, to_k8s_job  # noqa: PLC0415
    from envlock.image.catalog import read_images  # noqa: PLC0415
    from envlock.lock.project import check as check_lock  # noqa: PLC0415
    from envlock.lock.spec import load_spec  # noqa: PLC0415

    spec = load_spec(project)
    locked = check_lock(spec)
    digest, image_id = pushed_image(read_images(spec.project_dir).get(locked.lock_hash, {}))
    request = KubeJobSpec(list(command), digest, image_id, spec.name, seed, gpus, namespace, code_claim)
    text = json.dumps(to_k8s_job(locked, platform or locked.targets[0].platform, request), indent=2) + "\n"
    if (output := print_or_write(text, out, old_output)) is not None:
        typer.echo(f"wrote {output}: kubectl apply -f {output}", err=True)
