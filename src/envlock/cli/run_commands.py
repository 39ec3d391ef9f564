"""`envlock run`, `reproduce`, `diff`: training in the pinned image, re-verified, compared."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from envlock.cli.options import (
    AllowUnsignedOpt,
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
    ParamOpt,
    ProjectOpt,
    PublicKeyOpt,
    RuntimeOpt,
    SeedOpt,
)
from envlock.cli.root import CommandExited, app
from envlock.cli.wiring import wiring_of
from envlock.errors import DIFFERS
from envlock.paths import LOCK_FILE, VERDICT_FILE, ProjectLayout
from envlock.report import shown

if TYPE_CHECKING:
    from collections.abc import Callable

    from envlock.evidence.bundle import Unpacked
    from envlock.evidence.lineage import LineageTarget
    from envlock.evidence.trust import Trust
    from envlock.git import Origin
    from envlock.run.records import RunRecord, RunStore
    from envlock.run.reproduce import Tolerance
    from envlock.run.runner import RunRequest


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
    param: ParamOpt = None,
    env: EnvOpt = None,
    mlflow: MlflowOpt = None,
    no_mlflow: NoMlflowOpt = False,
    key: KeyOpt = None,
    runtime: RuntimeOpt = None,
    push: Annotated[
        bool,
        typer.Option("--push", help="On success, publish the run's evidence beside its image (envlock push)."),
    ] = False,
) -> None:
    """Run a command in the lock's image and record the run under .envlock/runs/ (and in MLflow, when asked)."""
    from envlock.lock.project import check as check_lock  # noqa: PLC0415
    from envlock.lock.spec import load_spec  # noqa: PLC0415
    from envlock.run.params import parse_given  # noqa: PLC0415
    from envlock.run.runner import RunRequest, project_outputs  # noqa: PLC0415
    from envlock.run.service import run_project  # noqa: PLC0415
    from envlock.run.tracking import open_tracking, tracking_settings  # noqa: PLC0415

    wiring = wiring_of(ctx)
    given = parse_given(param or [])
    signer = wiring.evidence(key)  # before the run: an unreadable key fails now, not after training
    spec = load_spec(project)
    wiring.register_root(spec.project_dir, spec.name)
    chosen = wiring.choose_runtime(runtime, spec.runtime)
    # Before anything runs: an output outside the project could not be hashed nor kept with the record.
    outputs = project_outputs(spec.project_dir, (*spec.outputs, *(output or [])))
    locked = check_lock(spec)
    tracking = open_tracking(tracking_settings(mlflow, no_mlflow, spec.name, wiring.environ), wiring.tracker)
    read = spec.run_inputs_with(inputs)
    record, store = run_project(
        spec,
        locked,
        RunRequest(
            command=list(command),
            seed=seed,
            force=force,
            gpus=gpus,
            outputs=outputs,
            pass_env=tuple(env or ()),
            inputs=read,
            params=given,
            param_files=spec.params,
        ),
        wiring.run_tools(chosen, signer),
        tracking=tracking,
        remove_container=partial(wiring.remove_container, runtime=chosen),
    )
    for note in record.preflight:
        wiring.say(f"preflight: {note}")
    wiring.say(
        f"run {record.run_id}: {record.status} (exit {record.exit_code}); record in {store.directory(record.run_id)}"
    )
    if record.tracking:
        wiring.say(f"MLflow: {record.tracking.link}")
    if push and record.status == "finished" and record.exit_code == 0:
        from envlock.cli.publish_commands import publish  # noqa: PLC0415

        publish(wiring, spec.project_dir, record.run_id, None)
    raise CommandExited(record.exit_code or 0)


KeepOpt = Annotated[
    Path | None,
    typer.Option(
        "--keep",
        help="reproduce BUNDLE: rebuild the project (and keep the re-run's record and verdict) in this new or empty "
        "folder; default: ./envlock-reproduction-<run id> under -C.",
        show_default=False,
    ),
]
PullOpt = Annotated[
    bool,
    typer.Option(
        "--pull",
        help="reproduce BUNDLE: let envlock fetch the run's image: by digest from the registries its record names, "
        "else by a rebuild from its lock (its base and wheels downloaded). Without it: the bundle's image archive, "
        "--archive or the engine only.",
    ),
]
ReproduceEnvOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--env",
        "-e",
        help="Pass this host variable in (repeatable). A run of this project: added to the ones it passed; "
        "a bundle's run: the only ones passed (a bundle's own list is never taken from here).",
    ),
]


@app.command("reproduce")
def reproduce_command(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run to re-verify (a unique prefix of its id), or a bundle.")],
    project: ProjectOpt = Path(),
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance for numbers in JSON/CSV outputs.")] = 0.0,
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance for numbers in JSON/CSV outputs.")] = 0.0,
    archive: ArchiveOpt = None,
    force: ForceOpt = False,
    runtime: RuntimeOpt = None,
    env: ReproduceEnvOpt = None,
    keep: KeepOpt = None,
    key: PublicKeyOpt = None,
    allow_unsigned: AllowUnsignedOpt = False,
    pull: PullOpt = False,
    chain: Annotated[
        bool,
        typer.Option(
            "--chain",
            help="Re-run the whole chain behind RUN (or a file a run wrote) from its raw inputs, step by step.",
        ),
    ] = False,
) -> None:
    """Restore a run's image, re-run its command on its code (untracked files too) and inputs with its seed, GPU
    mode and settings, and compare: exit 0 only for REPRODUCED (docs/run-and-reproduce.md has the others)."""
    from envlock.errors import UsageError  # noqa: PLC0415
    from envlock.evidence.bundle import verify_unpacked  # noqa: PLC0415
    from envlock.evidence.published import pulled_bundle  # noqa: PLC0415
    from envlock.evidence.trust import load_trust  # noqa: PLC0415
    from envlock.run.arguments import BundleRef, DigestRef, FileRef, RunRef, resolve  # noqa: PLC0415
    from envlock.run.records import RunStore  # noqa: PLC0415
    from envlock.run.reproduce import Tolerance  # noqa: PLC0415

    wiring = wiring_of(ctx)
    store = RunStore(project)
    rerun = _Rerun(Tolerance(rtol, atol), tuple(archive or ()), force, runtime, tuple(env or ()), pull)
    if chain:
        top = resolve(run_id, (FileRef, RunRef), store)
        _reproduce_chain(ctx, top, project, rerun.tolerance, rerun.archives, force, runtime)
        return

    # From someone else: the keys named here and the user's own store; no folder of keys that came with the
    # bundle or with the project rebuilt from it (project_dir=None).
    def trust() -> Trust:
        return load_trust(key or [], environ=wiring.environ, project_dir=None)

    target = resolve(run_id, (BundleRef, DigestRef, RunRef), store)
    if isinstance(target, RunRef) and (pulled := pulled_bundle(project, target.run_id)).is_file():
        # Another machine's run (envlock pull): never taken for the project's own (its variables passed, its
        # registries asked, its tag moved, git with the user's hooks); re-run from its bundle, under your trust.
        wiring.say(f"run {target.run_id} came with envlock pull: reproduced from the bundle it was pulled in")
        target = BundleRef(str(pulled), pulled)
    if isinstance(target, BundleRef):  # envlock reproduce BUNDLE: verified, then the project rebuilt in a kept folder

        def gate(found: Unpacked) -> str:
            return verify_unpacked(found, trust(), lambda: wiring.engine).require(allow_unsigned=allow_unsigned)

        code = _reproduce_bundle(ctx, target.path, keep, project, rerun, gate)
    elif isinstance(target, DigestRef):  # a run published in a registry (envlock push)
        code = _reproduce_published(ctx, target.text, keep, project, rerun, trust, allow_unsigned=allow_unsigned)
    else:
        if keep is not None or key or allow_unsigned or pull:
            raise UsageError(
                "--keep, --key, --allow-unsigned and --pull are for `envlock reproduce BUNDLE` "
                "(or REGISTRY/REPO@sha256:…)",
                hint="a run of this project re-runs in the project, from its own records",
            )
        code = _reproduce(ctx, store, target.run_id, rerun, "own")
    if code:
        raise typer.Exit(code)


def _reproduce_bundle(
    ctx: typer.Context, bundle: Path, keep: Path | None, project: Path, rerun: _Rerun, gate: Callable[[Unpacked], str]
) -> int:
    """A bundle's run (a file, or downloaded from a registry): `gate` verifies it, then its project is rebuilt in a
    kept folder and the run re-run there as a foreign run."""
    from envlock.evidence.bundle import reproducible  # noqa: PLC0415
    from envlock.run.records import RunStore  # noqa: PLC0415

    wiring = wiring_of(ctx)
    with reproducible(bundle, keep, parent=project, gate=gate) as rebuilt:
        wiring.say(rebuilt.verified)
        wiring.say(f"bundle's project rebuilt in {rebuilt.folder} (kept)")
        bundled = replace(rerun, archives=(*rerun.archives, *rebuilt.archives))
        return _reproduce(ctx, RunStore(rebuilt.project), rebuilt.run_id, bundled, "foreign")


def _reproduce_published(
    ctx: typer.Context,
    ref: str,
    keep: Path | None,
    project: Path,
    rerun: _Rerun,
    trust: Callable[[], Trust],
    *,
    allow_unsigned: bool,
) -> int:
    """`envlock reproduce REGISTRY/REPO@sha256:…`: the run's bundle downloaded (checked by digest and subject), its
    image pulled by digest, both verified under the receiver's trust, then the bundle's path."""
    from envlock.evidence.published import downloaded, parse_ref, pull_cap, verify_fetched  # noqa: PLC0415

    wiring = wiring_of(ctx)
    place, _ = parse_ref(ref)
    cap = pull_cap(wiring.environ)
    with downloaded(wiring.registry(place.host), ref, wiring.say, cache=wiring.cache, max_bytes=cap) as fetched:
        wiring.say(f"run {fetched.run.run_id}: {fetched.size} bytes of evidence from {fetched.run.ref}")

        def gate(found: Unpacked) -> str:
            # The evidence first (refused evidence costs no image download), then the image by its manifest's
            # digest (the engine checks the content), then the evidence again with the image checked by ID.
            verify_fetched(found, fetched, trust(), lambda: None).require(allow_unsigned=allow_unsigned)
            wiring.say(f"image {wiring.engine.pull(fetched.image_ref)[:19]} pulled from {fetched.image_ref}")
            checks = verify_fetched(found, fetched, trust(), lambda: wiring.engine)
            return checks.require(allow_unsigned=allow_unsigned)

        return _reproduce_bundle(ctx, fetched.bundle, keep, project, rerun, gate)


@dataclass(frozen=True)
class _Rerun:
    """How reproduce was asked to re-run: the options that travel from the command line to the re-run."""

    tolerance: Tolerance
    archives: tuple[Path, ...]
    force: bool
    runtime: str | None
    env: tuple[str, ...]
    pull: bool = False  # a bundle's run: its record's registries may be asked for its image


def _reproduce(ctx: typer.Context, store: RunStore, run_id: str, how: _Rerun, origin: Origin) -> int:
    """Re-run one recorded run of `store` and print the verdict; returns its exit status. A foreign run (from a
    bundle) passes only the --env variables, uses its image by ID and reads its code with git's hooks off."""
    from envlock.run.reproduce import reproduce_run, rerun_request  # noqa: PLC0415
    from envlock.run.runner import RunFolders  # noqa: PLC0415
    from envlock.run.service import RecordedRun, run_recorded  # noqa: PLC0415

    wiring = wiring_of(ctx)
    original = store.load(run_id)
    chosen = wiring.choose_runtime(how.runtime, original.runtime.name if original.runtime else "docker")
    names = how.env if origin == "foreign" else (*original.passed_env, *how.env)
    request = rerun_request(original, how.force, tuple(dict.fromkeys(names)))
    lock_path = store.directory(original.run_id) / LOCK_FILE
    tools = wiring.run_tools(chosen)

    def rerun(code: Path) -> RunRecord:
        folders = RunFolders(code, store, inputs_from=store.project_dir)
        recorded = RecordedRun(
            record=original,
            lock_path=lock_path,
            folders=folders,
            origin=origin,
            archives=how.archives,
            pull=origin == "own" or how.pull,
        )
        return run_recorded(recorded, request, tools)

    verdict = reproduce_run(
        original, store, store.project_dir, rerun, how.tolerance, origin=origin, evidence=tools.evidence
    )
    for line in verdict.lines():
        typer.echo(shown(line))
    wiring.say(f"verdict kept in {store.directory(verdict.new.run_id) / VERDICT_FILE}")
    return verdict.exit_code


def _reproduce_chain(
    ctx: typer.Context,
    target: LineageTarget,
    project: Path,
    tolerance: Tolerance,
    archives: tuple[Path, ...],
    force: bool,
    runtime: str | None,
) -> None:
    """`reproduce --chain`: every step of the chain re-run in order, one verdict per step and one for the chain."""
    from envlock.evidence.lineage import reproduce_chain, trace  # noqa: PLC0415
    from envlock.run.records import RunStore  # noqa: PLC0415
    from envlock.run.runner import RunFolders  # noqa: PLC0415
    from envlock.run.service import RecordedRun, run_recorded  # noqa: PLC0415

    wiring = wiring_of(ctx)
    store = RunStore(project)
    lineage = trace(store, target)
    evidence = wiring.evidence()

    def rerun_step(original: RunRecord, request: RunRequest, code: Path, inputs_from: Path) -> RunRecord:
        # Each step under its own runtime (--runtime, else the one it ran with): the tools are built for it.
        chosen = wiring.choose_runtime(runtime, original.runtime.name if original.runtime else "docker")
        tools = wiring.run_tools(chosen, evidence)
        lock_path = store.directory(original.run_id) / LOCK_FILE
        folders = RunFolders(code, store, inputs_from=inputs_from)
        return run_recorded(
            RecordedRun(record=original, lock_path=lock_path, folders=folders, archives=archives), request, tools
        )

    verdict = reproduce_chain(
        lineage, store, project, rerun_step, tolerance, evidence=evidence, force=force, report=wiring.say
    )
    for line in verdict.lines():
        typer.echo(shown(line))
    wiring.say(f"chain verdict kept in {ProjectLayout(project).chains / (verdict.chain_id + '.json')}")
    if verdict.exit_code:
        raise typer.Exit(verdict.exit_code)


@app.command("diff")
def diff_command(
    ctx: typer.Context,
    a: Annotated[str, typer.Argument(help="A lock file (or its directory), a run id, or a local image.")],
    b: Annotated[str, typer.Argument(help="The same kinds: what to compare A with.")],
    project: ProjectOpt = Path(),
    as_json: JsonOpt = False,
    exit_code: Annotated[
        bool,
        typer.Option(
            "--exit-code", help="Exit 33 when something differs, 0 when nothing does (1 stays envlock's bug code)."
        ),
    ] = False,
) -> None:
    """What changed between two locks, runs or images: packages, CUDA, driver floor, base; host, code, outputs."""
    from envlock.run.arguments import ImageRef, LockRef, RunRef, resolve  # noqa: PLC0415
    from envlock.run.records import RunStore  # noqa: PLC0415
    from envlock.run.rundiff import diff_any  # noqa: PLC0415

    wiring = wiring_of(ctx)
    store = RunStore(project)
    side_a, side_b = (resolve(side, (LockRef, RunRef, ImageRef), store, lambda: wiring.engine) for side in (a, b))
    kind_a, kind_b, changes = diff_any(side_a, side_b, store, lambda: wiring.engine)
    if as_json:
        document = {"a": {"kind": kind_a, "name": a}, "b": {"kind": kind_b, "name": b}, **changes.as_dict()}
        typer.echo(json.dumps(document, indent=2))
    else:
        typer.echo(shown(f"{kind_a} {a} -> {kind_b} {b}"))
        for line in changes.lines() or ["no differences"]:
            typer.echo(f"  {shown(line)}")
    if exit_code and changes:
        raise CommandExited(DIFFERS)
