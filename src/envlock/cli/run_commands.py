"""`envlock run`, `reproduce`, `diff`: training in the pinned image, re-verified, compared."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer

from envlock.cli.options import (
    ArchiveOpt,
    EnvOpt,
    ForceOpt,
    GpusOpt,
    InputsOpt,
    JsonOpt,
    KeyOpt,
    MlflowOpt,
    NoMlflowOpt,
    OutputsOpt,
    ProjectOpt,
    RuntimeOpt,
    SeedOpt,
)
from envlock.cli.root import CommandExited, app
from envlock.cli.wiring import wiring_of


@app.command("run", context_settings={"allow_interspersed_args": False})
def run_command(
    ctx: typer.Context,
    command: Annotated[list[str], typer.Argument(help="The command, after --: envlock run -- python train.py")],
    project: ProjectOpt = Path(),
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    gpus: GpusOpt = None,
    output: OutputsOpt = None,
    inputs: InputsOpt = None,
    env: EnvOpt = None,
    mlflow: MlflowOpt = None,
    no_mlflow: NoMlflowOpt = False,
    key: KeyOpt = None,
    runtime: RuntimeOpt = None,
) -> None:
    """Run a command in the lock's image and record the run under .envlock/runs/ (and in MLflow, when asked)."""
    from envlock.lock.project import check as check_lock  # noqa: PLC0415
    from envlock.lock.spec import check_input, load_spec  # noqa: PLC0415
    from envlock.run.pinned import run_project  # noqa: PLC0415
    from envlock.run.runner import RunRequest, project_outputs  # noqa: PLC0415
    from envlock.run.tracking import open_tracking, tracking_settings  # noqa: PLC0415

    wiring = wiring_of(ctx)
    signer = wiring.evidence(key)  # before the run: an unreadable key fails now, not after training
    spec = load_spec(project)
    wiring.register_root(spec.project_dir, spec.name)
    wiring.choose_runtime(runtime, spec.runtime)
    # Before anything runs: an output outside the project could not be hashed nor kept with the record.
    outputs = project_outputs(spec.project_dir, (*spec.outputs, *(output or [])))
    locked = check_lock(spec)
    tracking = open_tracking(tracking_settings(mlflow, no_mlflow, spec.name, wiring.environ), wiring.tracker)
    read = tuple(dict.fromkeys([*spec.run_inputs, *(check_input(path) for path in inputs or [])]))
    record, store = run_project(
        spec,
        locked,
        RunRequest(list(command), seed, force, gpus, outputs, tuple(env or ()), inputs=read),
        wiring.run_tools(signer),
        tracking=tracking,
        remove_container=wiring.remove_container,
    )
    for note in record.preflight:
        wiring.say(f"preflight: {note}")
    wiring.say(
        f"run {record.run_id}: {record.status} (exit {record.exit_code}); record in {store.directory(record.run_id)}"
    )
    if record.tracking:
        wiring.say(f"MLflow: {record.tracking.link}")
    raise CommandExited(record.exit_code or 0)


@app.command("reproduce")
def reproduce_command(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run to re-verify (a unique prefix of its id is enough).")],
    project: ProjectOpt = Path(),
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance for numbers in JSON/CSV outputs.")] = 0.0,
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance for numbers in JSON/CSV outputs.")] = 0.0,
    archive: ArchiveOpt = None,
    force: ForceOpt = False,
    runtime: RuntimeOpt = None,
) -> None:
    """Restore a run's image, re-run its command on its code (untracked files too) and inputs with its seed, GPU
    mode and settings, and compare: exit 0 only for REPRODUCED (see README for the other verdicts' codes)."""
    from envlock.run.pinned import run_recorded  # noqa: PLC0415
    from envlock.run.records import RunRecord, RunStore  # noqa: PLC0415
    from envlock.run.reproduce import Tolerance, reproduce_run, rerun_request  # noqa: PLC0415

    wiring = wiring_of(ctx)
    if bundled := _bundle_project(Path(run_id)):  # envlock reproduce BUNDLE: the project rebuilt from the bundle
        with bundled as (rebuilt, archives):
            reproduce_command(ctx, _bundle_run_id(rebuilt), rebuilt, rtol, atol, [*(archive or ()), *archives], force)
        return
    store = RunStore(project)
    original = store.load(run_id)
    wiring.choose_runtime(runtime, original.runtime.name if original.runtime else "docker")
    request = rerun_request(original, force)
    lock_path = store.directory(original.run_id) / "envlock.lock"
    tools = wiring.run_tools()

    def rerun(code: Path) -> RunRecord:
        return run_recorded(
            original, lock_path, request, code=code, store=store, tools=tools, archives=tuple(archive or ()),
            inputs_from=project,
        )  # fmt: skip

    verdict = reproduce_run(original, store, project, rerun, Tolerance(rtol, atol), evidence=tools.evidence)
    for line in verdict.lines():
        typer.echo(line)
    wiring.say(f"verdict kept in {store.directory(verdict.new.run_id) / 'verdict.json'}")
    if verdict.exit_code:
        raise typer.Exit(verdict.exit_code)


def _bundle_project(path: Path) -> contextlib.AbstractContextManager[tuple[Path, list[Path]]] | None:
    from envlock.evidence.bundle import is_bundle, reproducible  # noqa: PLC0415

    return reproducible(path) if is_bundle(path) else None


def _bundle_run_id(project: Path) -> str:
    from envlock.paths import ProjectLayout  # noqa: PLC0415

    (run_dir,) = ProjectLayout(project).runs.iterdir()
    return run_dir.name


@app.command("diff")
def diff_command(
    ctx: typer.Context,
    a: Annotated[str, typer.Argument(help="A lock file (or its directory), a run id, or a local image.")],
    b: Annotated[str, typer.Argument(help="The same kinds: what to compare A with.")],
    project: ProjectOpt = Path(),
    as_json: JsonOpt = False,
) -> None:
    """What changed between two locks, runs or images: packages, CUDA, driver floor, base; host, code, outputs."""
    from envlock.run.diff import diff_any  # noqa: PLC0415
    from envlock.run.records import RunStore  # noqa: PLC0415

    wiring = wiring_of(ctx)
    kind_a, kind_b, changes = diff_any(a, b, RunStore(project), lambda: wiring.engine)
    if as_json:
        document = {"a": {"kind": kind_a, "name": a}, "b": {"kind": kind_b, "name": b}, **changes.as_dict()}
        typer.echo(json.dumps(document, indent=2))
        return
    typer.echo(f"{kind_a} {a} -> {kind_b} {b}")
    for line in changes.lines() or ["no differences"]:
        typer.echo(f"  {line}")
