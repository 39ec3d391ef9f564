"""The command line: parse, call one core function, render. Every EnvlockError becomes one red line."""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from envlock import __version__
from envlock.errors import EnvlockError

if TYPE_CHECKING:
    from envlock.cluster.slurm import JobState
    from envlock.engine.docker import DockerEngine
    from envlock.image.bases import BaseStore, UpstreamBase
    from envlock.image.build import Builder
    from envlock.lock.lockfile import Lock
    from envlock.lock.resolve import Resolver
    from envlock.lock.spec import Spec
    from envlock.report import Progress
    from envlock.run.records import RunRecord, RunStore
    from envlock.run.runner import PinnedImage, RunRequest
    from envlock.run.tracking import Tracking

app = typer.Typer(
    name="envlock",
    help="Lock, build, run and reproduce ML training environments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts name TOML tables like [tool.envlock]: plain text, not markup
)
export_app = typer.Typer(help="Write the lock in another tool's format.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(export_app, name="export")
runs_app = typer.Typer(help="The run records of this project.", rich_markup_mode=None)
app.add_typer(runs_app, name="runs")
base_app = typer.Typer(
    help="Base images: envlock's reproducible recipes under base-images/.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(base_app, name="base")

INTERRUPTED = 130


class CommandExited(SystemExit):
    """The exit status of the user's command: passed through as it is, never read as envlock's own."""


NOT_REPRODUCED = 16

ProjectOpt = Annotated[
    Path,
    typer.Option("--project", "-C", help="Project directory holding pyproject.toml.", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
MlflowOpt = Annotated[
    str | None,
    typer.Option(
        "--mlflow",
        help="Track the run in MLflow at this URI (default: $MLFLOW_TRACKING_URI when set).",
        show_default=False,
    ),
]
NoMlflowOpt = Annotated[bool, typer.Option("--no-mlflow", help="Do not track, even with MLFLOW_TRACKING_URI set.")]
PlatformOpt = Annotated[
    str | None, typer.Option("--platform", help="Only this platform, e.g. linux/amd64.", show_default=False)
]


def _say(message: str) -> None:
    typer.secho(message, err=True, dim=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"envlock {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Lock, build, run and reproduce ML training environments."""


@app.command()
def lock(
    project: ProjectOpt = Path(),
    check: Annotated[
        bool, typer.Option("--check", help="Exit non-zero if envlock.lock is stale; never resolves or writes.")
    ] = False,
    upgrade: Annotated[bool, typer.Option("--upgrade", "-U", help="Ignore earlier pins; take the newest.")] = False,
    upgrade_package: Annotated[
        list[str] | None,
        typer.Option("--upgrade-package", "-P", help="Let this package (repeatable) move; keep the rest."),
    ] = None,
    resolver: Annotated[
        str, typer.Option("--resolver", help="uv (any target) or pip-tools (this machine's Python only).")
    ] = "uv",
) -> None:
    """Resolve packages, CUDA stack and driver floor for every platform into envlock.lock."""
    from envlock.lock.spec import load_spec  # noqa: PLC0415  (keep `--help` and `--check` fast)

    spec = load_spec(project)
    if check:
        from envlock.lock.project import check as check_lock  # noqa: PLC0415

        locked = check_lock(spec)
        typer.echo(f"envlock.lock is up to date (lock {locked.short_hash})")
        return
    from envlock.lock.project import LockOptions, lock_project  # noqa: PLC0415

    outcome = lock_project(
        spec,
        _resolver(resolver),
        upstream=_upstream,
        bases=_bases(),
        options=LockOptions(upgrade=upgrade, upgrade_packages=tuple(upgrade_package or ())),
        report=_say,
    )
    new = outcome.lock
    if not outcome.written:
        if outcome.resolved:
            typer.echo(f"envlock.lock unchanged (lock {new.short_hash})")
        return
    if outcome.previous is None:
        summary = ", ".join(f"{t.platform}: {len(t.packages)} packages" for t in new.targets)
        typer.echo(f"wrote envlock.lock (lock {new.short_hash}; {summary})")
        return
    typer.echo(f"updated envlock.lock (lock {outcome.previous.short_hash} -> {new.short_hash})")
    for line in outcome.changes.lines() or ["inputs changed; the resolution is the same"]:
        typer.echo(f"  {line}")


def _resolver(name: str) -> Resolver:
    if name == "uv":
        from envlock.lock.uv import UvResolver  # noqa: PLC0415

        return UvResolver()
    if name == "pip-tools":
        from envlock.lock.piptools import PipToolsResolver  # noqa: PLC0415

        return PipToolsResolver()
    raise EnvlockError(f"unknown resolver {name!r}", hint="use --resolver uv or --resolver pip-tools")


@app.command()
def show(project: ProjectOpt = Path(), as_json: JsonOpt = False, platform: PlatformOpt = None) -> None:
    """What is locked, per platform, with the CUDA / driver / GPU architecture summary."""
    from envlock.cli.render import lock_summary, render_lock  # noqa: PLC0415
    from envlock.lock import lockfile  # noqa: PLC0415

    locked = lockfile.read(project / "envlock.lock")
    platforms: list[str] = [platform] if platform else [t.platform for t in locked.targets]
    for name in platforms:
        locked.target(name)
    stale = _staleness(project, locked)
    if as_json:
        typer.echo(json.dumps(lock_summary(locked, platforms, stale), indent=2, default=str))
    else:
        typer.echo(render_lock(locked, platforms, stale))


def _staleness(project: Path, locked: Lock) -> str:
    """`up to date`, `stale`, or why we cannot tell: show works even when pyproject.toml is broken."""
    from envlock.lock.spec import load_spec  # noqa: PLC0415

    try:
        spec = load_spec(project)
    except EnvlockError:
        return "unknown (pyproject.toml does not load)"
    return "up to date" if spec.input_hash() == locked.input_hash else "stale (run envlock lock)"


@export_app.command("pylock")
def export_pylock(
    project: ProjectOpt = Path(),
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: print to stdout).")
    ] = None,
    platform: PlatformOpt = None,
) -> None:
    """The lock as a PEP 751 pylock.toml, for uv, pip and other installers."""
    from envlock.fsutil import atomic_write_text  # noqa: PLC0415
    from envlock.lock import lockfile  # noqa: PLC0415
    from envlock.lock.export import to_pylock  # noqa: PLC0415

    locked = lockfile.read(project / "envlock.lock")
    text = to_pylock(locked, [platform] if platform else None)
    if output is None:
        typer.echo(text, nl=False)
    else:
        atomic_write_text(output, text)
        typer.echo(f"wrote {output}", err=True)


def _upstream(ref: str) -> UpstreamBase:
    """An upstream base from the engine (pulled by digest if absent), exported once into the layer store."""
    import tempfile  # noqa: PLC0415

    from envlock.engine.docker import DockerEngine  # noqa: PLC0415
    from envlock.image.bases import export_upstream  # noqa: PLC0415
    from envlock.image.layers import LayerStore  # noqa: PLC0415
    from envlock.paths import cache_root as default_cache_dir  # noqa: PLC0415

    root = default_cache_dir()
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="upstream-", dir=root / "tmp") as scratch:
        return export_upstream(ref, DockerEngine(), LayerStore(root / "layers"), Path(scratch))


def _builder(engine: DockerEngine, index_urls: list[str] | None = None, progress: Progress | None = None) -> Builder:
    """A Builder over the user's cache directory: wheel cache, layer store and bases, all in one place."""
    from envlock.image.build import Builder  # noqa: PLC0415
    from envlock.image.layers import LayerStore  # noqa: PLC0415
    from envlock.image.wheels import HttpFetcher, WheelCache  # noqa: PLC0415
    from envlock.paths import cache_root as default_cache_dir  # noqa: PLC0415
    from envlock.report import no_progress  # noqa: PLC0415

    root = default_cache_dir()
    cache = WheelCache(root / "wheels", HttpFetcher(index_urls or []))
    return Builder(engine, cache, LayerStore(root / "layers"), _bases(), _say, progress or no_progress)


def _bases() -> BaseStore:
    """The store of built bases under the user's cache directory."""
    from envlock.image.bases import BaseStore, MmdebstrapBuilder  # noqa: PLC0415
    from envlock.paths import cache_root as default_cache_dir  # noqa: PLC0415

    return BaseStore(default_cache_dir() / "bases", MmdebstrapBuilder())


@app.command()
def build(
    project: ProjectOpt = Path(),
    platform: PlatformOpt = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Make every layer afresh.")] = False,
    push: Annotated[bool, typer.Option("--push", help="Push to the registry ([tool.envlock] registry).")] = False,
    registry: Annotated[
        str | None, typer.Option("--registry", help="Push here instead: host[:port][/namespace].", show_default=False)
    ] = None,
) -> None:
    """Build the lock's image, tagged <name>:<lock-hash-prefix>; a no-op when it exists."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn  # noqa: PLC0415

    from envlock.engine.docker import DockerEngine  # noqa: PLC0415
    from envlock.image.catalog import record_image  # noqa: PLC0415
    from envlock.image.plan import plan_image  # noqa: PLC0415
    from envlock.image.registry import HttpRegistry, split_target  # noqa: PLC0415
    from envlock.lock.project import check as check_lock  # noqa: PLC0415
    from envlock.lock.spec import load_spec  # noqa: PLC0415
    from envlock.lock.targets import host_platform  # noqa: PLC0415

    spec = load_spec(project)
    locked = check_lock(spec)
    chosen = platform or host_platform()
    target = registry or spec.registry
    if (push or registry) and not target:
        raise EnvlockError(
            "--push needs a registry", hint='set registry = "host[:port]/namespace" in [tool.envlock], or --registry'
        )
    bars = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), transient=True)
    tasks: dict[str, Any] = {}

    def progress(name: str, done: int, total: int | None) -> None:
        if name not in tasks:
            tasks[name] = bars.add_task(name, total=total)
        bars.update(tasks[name], completed=done)

    builder = _builder(DockerEngine(), [spec.index_url, *spec.extra_index_urls], progress)
    plan = plan_image(locked, spec.lock_path.read_text(encoding="utf-8"), spec.name, chosen)
    with bars:
        outcome = builder.build(plan, no_cache=no_cache)
        pushed = (
            builder.push(plan, HttpRegistry(split_target(target)[0]), target) if target and (push or registry) else None
        )
    verb = "built" if outcome.built else "already built:"
    typer.echo(f"{verb} {outcome.reference} ({outcome.image_id})")
    if pushed:
        typer.echo(f"pushed {pushed}")
    record_image(
        spec.project_dir, locked.lock_hash, outcome.image_id, outcome.reference, outcome.base_diff_id, pushed=pushed
    )


@base_app.command("list")
def base_list(as_json: JsonOpt = False) -> None:
    """The base recipes and the bases built from them on this machine."""
    from envlock.lock.recipes import load_recipe, recipe_names  # noqa: PLC0415

    built = _bases().built()
    rows: list[dict[str, Any]] = []
    for name in recipe_names():
        recipe = load_recipe(name)
        mine = [b for b in built if b["recipe"] == name and b["recipe-sha256"] == recipe.sha256]
        rows.append({"name": name, "python": recipe.python, "recipe-sha256": recipe.sha256, "built": mine})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = ", ".join(f"{b['platform']} {b['diff-id'][:19]} ({len(b['packages'])} debs)" for b in row["built"])
        typer.echo(
            f"{row['name']:<20} Python {row['python']}  recipe {row['recipe-sha256'][:12]}  {state or 'not built'}"
        )


@base_app.command("build")
def base_build(
    name: Annotated[str, typer.Argument(help="Recipe name, e.g. debian-bookworm.")],
    platform: PlatformOpt = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Build even when already built.")] = False,
    load: Annotated[bool, typer.Option("--load", help="Also load it into Docker as envlock-base/NAME:…")] = False,
) -> None:
    """Build a base from its recipe (mmdebstrap, SOURCE_DATE_EPOCH) into envlock's store."""
    from envlock.lock.recipes import load_recipe, recipe_names  # noqa: PLC0415
    from envlock.lock.targets import host_platform  # noqa: PLC0415

    if name not in recipe_names():
        raise EnvlockError(f"no base recipe {name!r}", hint=f"known recipes: {', '.join(recipe_names())}")
    chosen = platform or host_platform()
    _say(f"building base {name} for {chosen} with mmdebstrap")
    built = _bases().ensure(load_recipe(name), chosen, rebuild=rebuild)
    typer.echo(f"base {name} {chosen}: {built.diff_id} ({len(built.packages)} Debian packages)")
    if load:
        from envlock.engine.docker import DockerEngine  # noqa: PLC0415
        from envlock.image.build import load_base  # noqa: PLC0415

        typer.echo(f"loaded as {load_base(built, DockerEngine())}")


def _write_through(stream: str, data: bytes) -> None:
    target = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
    target.write(data)
    target.flush()


@app.command("run", context_settings={"allow_interspersed_args": False})
def run_command(
    command: Annotated[list[str], typer.Argument(help="The command, after --: envlock run -- python train.py")],
    project: ProjectOpt = Path(),
    seed: Annotated[int, typer.Option("--seed", help="Seed: PYTHONHASHSEED and ENVLOCK_SEED.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Run although the host fails the preflight.")] = False,
    gpus: Annotated[
        bool | None, typer.Option("--gpus/--no-gpus", help="Default: GPUs when the host has them and the lock is CUDA.")
    ] = None,
    output: Annotated[
        list[str] | None, typer.Option("--output", "-o", help="A file or directory the run produces (repeatable).")
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="Pass this host variable in (repeatable); recorded by name.")
    ] = None,
    mlflow: MlflowOpt = None,
    no_mlflow: NoMlflowOpt = False,
) -> None:
    """Run a command in the lock's image and record the run under .envlock/runs/ (and in MLflow, when asked)."""
    from envlock.engine.docker import DockerEngine  # noqa: PLC0415
    from envlock.engine.launch import DockerLauncher  # noqa: PLC0415
    from envlock.lock.project import check as check_lock  # noqa: PLC0415
    from envlock.lock.spec import load_spec  # noqa: PLC0415
    from envlock.lock.targets import host_platform  # noqa: PLC0415
    from envlock.run.gitstate import git_state  # noqa: PLC0415
    from envlock.run.hostprobe import PynvmlAdapter, probe_host  # noqa: PLC0415
    from envlock.run.records import RunStore  # noqa: PLC0415
    from envlock.run.runner import RunRequest, run_in_image  # noqa: PLC0415

    spec = load_spec(project)
    locked = check_lock(spec)
    tracking = _tracking(_tracking_settings(mlflow, no_mlflow, spec.name))
    lock_text = spec.lock_path.read_text(encoding="utf-8")
    platform = host_platform()
    engine = DockerEngine()
    image = _pinned_image(spec, locked, lock_text, platform, engine)
    launcher = DockerLauncher(engine.client)
    store = RunStore(spec.project_dir)
    for orphan in store.settle_orphans(launcher.remove):
        _say(f"run {orphan.run_id} had lost its envlock (killed): marked interrupted, container removed")
    outputs = tuple(dict.fromkeys([*spec.outputs, *(output or [])]))
    record = run_in_image(
        locked,
        lock_text,
        platform,
        RunRequest(list(command), seed, force, gpus, outputs, tuple(env or ())),
        project_dir=spec.project_dir,
        image=image,
        host=probe_host(PynvmlAdapter(), docker_version=lambda: str(engine.client.version().get("Version"))),
        git=git_state(spec.project_dir, outputs),
        launcher=launcher,
        store=store,
        output=_write_through,
        tracking=tracking,
    )
    for note in record.preflight:
        _say(f"preflight: {note}")
    _say(f"run {record.run_id}: {record.status} (exit {record.exit_code}); record in {store.directory(record.run_id)}")
    if record.tracking:
        _say(f"MLflow: {record.tracking['link']}")
    raise CommandExited(record.exit_code or 0)


def _tracking_settings(uri: str | None, off: bool, project_name: str) -> dict[str, Any] | None:
    """Where to track, from --mlflow / --no-mlflow and MLflow's own variables; None: no tracking."""
    import os  # noqa: PLC0415

    if uri and off:
        raise EnvlockError("--mlflow and --no-mlflow contradict each other", hint="give one of them")
    uri = None if off else uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return None
    return {
        "uri": uri,
        "experiment": os.environ.get("MLFLOW_EXPERIMENT_NAME") or project_name,
        "reuse": os.environ.get("MLFLOW_RUN_ID") or None,
    }


def _tracking(settings: dict[str, Any] | None) -> Tracking | None:
    """The MLflow tracker for these settings (checked up front: an unusable URI fails before anything runs)."""
    if not settings:
        return None
    from envlock.run.tracking import MlflowTracker, Tracking, tracking_target  # noqa: PLC0415

    tracker = MlflowTracker(tracking_target(settings["uri"]))
    tracker.check()
    return Tracking(tracker, settings["experiment"], settings["reuse"])


def _pinned_image(spec: Spec, locked: Lock, lock_text: str, platform: str, engine: DockerEngine) -> PinnedImage:
    """The lock's image by ID (built when missing), with the digests it was pushed under."""
    from envlock.image.catalog import read_images  # noqa: PLC0415
    from envlock.run.runner import PinnedImage  # noqa: PLC0415

    reference = f"{spec.name}:{locked.short_hash}"
    # The usual case, the image exists: found without importing the build machinery (start-up time).
    image_id = engine.existing(reference, locked.lock_hash) or _build_for_run(spec, locked, lock_text, platform, engine)
    pushed = read_images(spec.project_dir).get(locked.lock_hash, {}).get("pushed", [])
    return PinnedImage(image_id, reference, tuple(pushed))


def _build_for_run(spec: Spec, locked: Lock, lock_text: str, platform: str, engine: DockerEngine) -> str:
    """Build the lock's image for `envlock run` when it is missing; its ID."""
    from envlock.image.catalog import record_image  # noqa: PLC0415
    from envlock.image.plan import plan_image  # noqa: PLC0415

    builder = _builder(engine, [spec.index_url, *spec.extra_index_urls])
    built = builder.build(plan_image(locked, lock_text, spec.name, platform))
    record_image(spec.project_dir, locked.lock_hash, built.image_id, built.reference, built.base_diff_id)
    return built.image_id


@dataclass(frozen=True)
class SubmitArgs:
    """`envlock submit [envlock options] --slurm [sbatch options] -- CMD`, split before typer parses the first part:
    sbatch's options (-o, -e, -C, --gpus…) would otherwise collide with envlock's."""

    sbatch: list[str]
    command: list[str]


def _split_submit(args: list[str]) -> tuple[list[str], SubmitArgs]:
    head, command = (args[: args.index("--")], args[args.index("--") + 1 :]) if "--" in args else (args, [])
    if "--slurm" not in head:
        return head, SubmitArgs([], command)
    at = head.index("--slurm") + 1
    if "--help" in head[at:]:  # `envlock submit --slurm --help` asks envlock, not sbatch
        return [*head[:at], "--help"], SubmitArgs([], command)
    return head[:at], SubmitArgs(head[at:], command)


@app.command("submit")
def submit_command(
    ctx: typer.Context,
    project: ProjectOpt = Path(),
    slurm: Annotated[
        bool, typer.Option("--slurm", help="Submit to Slurm; the options after it, up to --, go to sbatch.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed: PYTHONHASHSEED and ENVLOCK_SEED.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Run although the node fails the preflight.")] = False,
    gpus: Annotated[
        bool | None,
        typer.Option("--gpus/--no-gpus", help="Default: GPUs when the node has them and the lock is CUDA."),
    ] = None,
    output: Annotated[
        list[str] | None, typer.Option("--output", "-o", help="A file or directory the run produces (repeatable).")
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", help="Pass this variable in (repeatable; as the job sees it); recorded by name."),
    ] = None,
    mlflow: MlflowOpt = None,
    no_mlflow: NoMlflowOpt = False,
) -> None:
    """Submit a batch job that runs a command in the lock's image on a cluster node, with a run record.

    envlock submit [options] --slurm [sbatch options] -- python train.py
    """
    from envlock.cluster.slurm import Slurm  # noqa: PLC0415
    from envlock.cluster.submit import Submission, sbatch_options_of, submit_run  # noqa: PLC0415
    from envlock.engine.docker import DockerEngine  # noqa: PLC0415
    from envlock.lock.project import check as check_lock  # noqa: PLC0415
    from envlock.lock.spec import load_spec  # noqa: PLC0415
    from envlock.lock.targets import host_platform  # noqa: PLC0415
    from envlock.run.records import RunStore  # noqa: PLC0415
    from envlock.run.runner import RunRequest  # noqa: PLC0415

    parsed = ctx.obj if isinstance(ctx.obj, SubmitArgs) else SubmitArgs([], [])
    if not slurm:
        raise EnvlockError("choose the scheduler to submit to", hint="envlock submit --slurm [sbatch options] -- CMD")
    if not parsed.command:
        raise EnvlockError(
            "no command to run: it goes after --", hint="envlock submit --slurm -p gpu -- python train.py"
        )
    sbatch = sbatch_options_of(parsed.sbatch)
    scheduler = Slurm()
    scheduler.ping()
    spec = load_spec(project)
    locked = check_lock(spec)
    tracking = _tracking_settings(mlflow, no_mlflow, spec.name)
    _tracking(tracking)  # an unusable or unreachable store is refused now, not later on the node
    lock_text = spec.lock_path.read_text(encoding="utf-8")
    platform = host_platform()
    image = _pinned_image(spec, locked, lock_text, platform, DockerEngine())
    if not image.repo_digests:
        _say(
            "note: the image was never pushed: a node that does not have it rebuilds it from the lock "
            "(envlock build --push lets nodes pull it by digest)"
        )
    outputs = tuple(dict.fromkeys([*spec.outputs, *(output or [])]))
    store = RunStore(spec.project_dir)
    project_dir = spec.project_dir.resolve()

    def task(run_id: str) -> list[str]:
        return [sys.executable, "-m", "envlock", "run-submitted", run_id, "--project", str(project_dir)]

    record = submit_run(
        locked,
        lock_text,
        platform,
        Submission(
            RunRequest(list(parsed.command), seed, force, gpus, outputs, tuple(env or ())),
            sbatch,
            f"envlock-{spec.name}",
            tracking,
        ),
        project_dir=project_dir,
        image=image,
        store=store,
        slurm=scheduler,
        task=task,
    )
    job = (record.scheduler or {}).get("job-id")
    typer.echo(f"run {record.run_id}: queued as Slurm job {job}")
    _say(f"follow it with `envlock runs`, wait for it with `envlock runs wait {record.run_id}`")


def _stop_on_sigterm() -> None:
    """Slurm cancels (scancel, time limit) with SIGTERM: stop like Ctrl-C, so the container goes and the record
    says interrupted."""
    import signal  # noqa: PLC0415

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


@app.command("run-submitted", hidden=True)
def run_submitted_command(
    run_id: Annotated[str, typer.Argument(help="The queued run (its record was written by envlock submit).")],
    project: ProjectOpt = Path(),
) -> None:
    """A submitted job's task, on its node: probe, preflight, restore the image by ID, run, record."""
    import os  # noqa: PLC0415

    from envlock.cluster.slurm import Slurm  # noqa: PLC0415
    from envlock.cluster.submit import (  # noqa: PLC0415
        node_rank,
        node_role,
        on_node,
        run_submitted,
        submitted_request,
        submitted_tracking,
    )
    from envlock.run.records import RunStore  # noqa: PLC0415

    _stop_on_sigterm()
    store = RunStore(project)
    rank = node_rank(os.environ)

    def start(queued: RunRecord, target: RunStore) -> RunRecord:
        role = node_role(os.environ, Slurm())
        lock_path = store.directory(queued.run_id) / "envlock.lock"
        # MLflow: rank 0 starts, tags and ends the run; the other nodes' containers are not told about it.
        tracking = _tracking(submitted_tracking(queued, os.environ)) if rank == 0 else None
        request = submitted_request(queued, os.environ, role)
        return _run_pinned(
            queued, lock_path, request, project, target, on_node(queued, os.environ, role), tracking=tracking
        )

    record = run_submitted(store, run_id, rank, start)
    where = store.directory(record.run_id) if rank == 0 else store.for_node(rank).directory(record.run_id)
    _say(f"run {record.run_id} (node rank {rank}): {record.status} (exit {record.exit_code}); record in {where}")
    raise CommandExited(record.exit_code or 0)


def _run_pinned(
    recorded: RunRecord,
    lock_path: Path,
    request: RunRequest,
    code: Path,
    store: RunStore,
    queued: RunRecord | None = None,
    archives: tuple[Path, ...] = (),
    tracking: Tracking | None = None,
) -> RunRecord:
    """Run a recorded run's image (restored by ID: engine, registry by digest, archive, rebuild) on this host."""
    from envlock.engine.docker import DockerEngine  # noqa: PLC0415
    from envlock.engine.launch import DockerLauncher  # noqa: PLC0415
    from envlock.image.restore import restore_image  # noqa: PLC0415
    from envlock.lock import lockfile  # noqa: PLC0415
    from envlock.run.gitstate import git_state  # noqa: PLC0415
    from envlock.run.hostprobe import PynvmlAdapter, probe_host  # noqa: PLC0415
    from envlock.run.runner import PinnedImage, run_in_image  # noqa: PLC0415

    engine = DockerEngine()
    restored = restore_image(
        recorded.image_id,
        engine=engine,
        repo_digests=tuple(recorded.repo_digests),
        archives=(*archives, _archive_path(store.root.parent.parent, recorded.image_id)),
        rebuild=_rebuild(lock_path, recorded.image_reference.split(":")[0], engine),
        reference=recorded.image_reference,
        report=_say,
    )
    _say(f"image {restored.image_id[:19]} from {restored.source}")
    return run_in_image(
        lockfile.read(lock_path),
        lock_path.read_text(encoding="utf-8"),
        recorded.platform,
        request,
        project_dir=code,
        image=PinnedImage(recorded.image_id, recorded.image_reference, tuple(recorded.repo_digests)),
        host=probe_host(PynvmlAdapter(), docker_version=lambda: str(engine.client.version().get("Version"))),
        git=git_state(code, request.outputs),
        launcher=DockerLauncher(engine.client),
        store=store,
        output=_write_through,
        queued=queued,
        tracking=tracking,
    )


@runs_app.callback(invoke_without_command=True)
def runs_list(ctx: typer.Context, project: ProjectOpt = Path(), as_json: JsonOpt = False) -> None:
    """The project's runs, oldest first (a table, or --json)."""
    ctx.obj = project  # `envlock runs -C DIR show ID` means that project for show too
    if ctx.invoked_subcommand:
        return
    from envlock.run.records import RunStore  # noqa: PLC0415

    store = RunStore(project)
    records, unreadable = store.scan()
    live, settled = _settle(store, records)
    records = [settled.get(r.run_id, r) for r in records]
    for broken in unreadable:
        _say(f"warning: skipped unreadable run record {broken}")
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in records], indent=2))
        return
    if not records:
        typer.echo("no runs yet: envlock run -- COMMAND")
        return
    from envlock.cluster.submit import describe  # noqa: PLC0415

    places = {r.run_id: describe(r, live) for r in records}
    width = max(5, *(len(place) for place in places.values()))
    typer.echo(
        f"{'RUN':<26} {'STATUS':<11} {'EXIT':>4}  {'WHERE':<{width}} {'IMAGE':<19} {'LOCK':<12} {'COMMIT':<13} COMMAND"
    )
    for r in records:
        commit = (r.git.get("commit") or "-")[:10] + ("+" if r.git.get("dirty") else "")
        code = "-" if r.exit_code is None else str(r.exit_code)
        lock = r.lock_hash.removeprefix("sha256:")[:12]
        typer.echo(
            f"{r.run_id:<26} {r.status:<11} {code:>4}  {places[r.run_id]:<{width}} {r.image_id[:19]:<19} {lock:<12} "
            f"{commit:<13} {' '.join(r.command)}"
        )


def _settle(store: RunStore, records: list[RunRecord]) -> tuple[dict[str, JobState], dict[str, RunRecord]]:
    """Close the records of runs that lost their envlock: local ones whose envlock was killed (their containers
    removed when the engine is reachable), batch jobs Slurm ended without envlock's task finishing them. Returns
    Slurm's state of the jobs still queued or running, and the records closed now by run id."""
    from envlock.engine.docker import DockerEngine  # noqa: PLC0415
    from envlock.engine.launch import DockerLauncher  # noqa: PLC0415

    def remove(name: str) -> None:
        try:
            DockerLauncher(DockerEngine().client).remove(name)
        except EnvlockError as exc:
            _say(f"warning: could not remove container {name}: {exc.message}")

    closed = {}
    for orphan in store.settle_orphans(remove, records):
        _say(f"run {orphan.run_id} had lost its envlock (killed): marked interrupted")
        closed[orphan.run_id] = orphan
    if not any(r.scheduler and r.status in ("queued", "running") for r in records):
        return {}, closed
    from envlock.cluster.slurm import Slurm  # noqa: PLC0415
    from envlock.cluster.submit import settle_jobs  # noqa: PLC0415

    try:
        live, settled = settle_jobs(store, records, Slurm(), remove)
    except EnvlockError as exc:
        _say(f"warning: could not ask Slurm about queued/running jobs ({exc.message}): showing their last record")
        return {}, closed
    for job in settled:
        _say(f"run {job.run_id}: {job.error}: marked {job.status}")
        closed[job.run_id] = job
    return live, closed


RunIdArg = Annotated[str, typer.Argument(help="A run id, or a unique prefix of one.")]
# Under `envlock runs`, whose own -C applies when the subcommand has none (envlock runs -C DIR show ID).
RunsProjectOpt = Annotated[
    Path | None,
    typer.Option("--project", "-C", help="Project directory holding pyproject.toml.", show_default=False),
]


@runs_app.command("wait")
def runs_wait(
    ctx: typer.Context,
    run_id: RunIdArg,
    project: RunsProjectOpt = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Give up after this many seconds (exit 19).", min=0)
    ] = None,
) -> None:
    """Wait until a run (a submitted job, or a run in another terminal) is final; exit with its command's status."""
    from envlock.run.records import RunStore, exit_status, wait_until_final  # noqa: PLC0415

    store = RunStore(project or ctx.obj or Path())
    run = store.load(run_id).run_id

    def current() -> RunRecord:
        record = store.load(run)
        return _settle(store, [record])[1].get(run, record)

    record = wait_until_final(current, timeout, poll=2.0)
    nodes = {rank: n for rank, n in store.node_records(run).items() if n.status != "finished"}
    typer.echo(
        f"run {run}: {record.status} (exit {record.exit_code})"
        + (f": {record.error}" if record.error else "")
        + "".join(f"; node {rank}: {n.status} (exit {n.exit_code})" for rank, n in nodes.items())
    )
    raise CommandExited(exit_status(record))


@runs_app.command("show")
def runs_show(
    ctx: typer.Context,
    run_id: RunIdArg,
    project: RunsProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One run record in full."""
    from envlock.run.hostprobe import gpu_summary  # noqa: PLC0415
    from envlock.run.records import RunStore  # noqa: PLC0415

    store = RunStore(project or ctx.obj or Path())
    record = store.load(run_id)
    live, closed = _settle(store, [record])
    record = closed.get(record.run_id, record)
    if as_json:
        typer.echo(json.dumps(record.as_dict(), indent=2, sort_keys=True))
        return
    host = record.host
    gpus = gpu_summary(host.get("gpus", []))
    code = record.git.get("commit") or ("not a git repository" if record.git else "taken when the job starts")
    dirty = "  (dirty: diff.patch saved)" if record.git.get("dirty") else ""
    machine = f"{host.get('cpu-model')} · kernel {host.get('kernel')} · docker {host.get('docker-version')}"
    settings = " ".join(f"{k}={v}" for k, v in sorted(record.environment.items()) if not k.startswith("ENVLOCK_"))
    lines = [
        f"run       {record.run_id}  {record.status}, exit {record.exit_code}",
        f"command   {' '.join(record.command)}",
        f"image     {record.image_id}  ({record.image_reference})",
        *(f"pushed    {d}" for d in record.repo_digests),
        f"lock      {record.lock_hash}  (copy: {store.directory(record.run_id) / 'envlock.lock'})",
        f"code      {code}{dirty}",
        f"host      driver {host.get('driver-version') or 'none'} · GPUs {gpus} · {machine}"
        if host
        else "host      not probed: "
        + ("the job's task probes the node it runs on" if record.status == "queued" else "the command never started"),
        f"seed      {record.seed}  {settings}",
        f"time      {record.started} → {record.ended or '-'}",
        f"log       {store.log_path(record.run_id)}",
        *(f"preflight {note}" for note in record.preflight),
        *(f"output    {path}  {digest or 'not produced'}" for path, digest in record.outputs.items()),
    ]
    if record.scheduler:
        from envlock.cluster.submit import describe  # noqa: PLC0415

        job = record.scheduler
        state = live[record.run_id].state if record.run_id in live else job.get("state", "")
        lines.insert(1, f"job       {describe(record, live)}  {state}  node {job.get('node') or '-'}".rstrip())
        lines.insert(
            2, f"sbatch    {' '.join(job.get('options', [])) or '(no options)'}  submitted {job.get('submitted')}"
        )
        for offset, (rank, node) in enumerate(store.node_records(record.run_id).items(), start=3):
            lines.insert(
                offset,
                f"node {rank:<4} {(node.scheduler or {}).get('node') or '-'}: {node.status}, exit {node.exit_code} · "
                f"driver {node.host.get('driver-version') or 'none'} · GPUs {gpu_summary(node.host.get('gpus', []))}"
                + (f" · {node.error}" if node.error else "")
                + f"  ({store.for_node(rank).directory(record.run_id)})",
            )
    if record.error:
        lines.append(f"error     {record.error}")
    if record.forced:
        lines.append("forced    yes: the preflight refused this host and --force overrode it")
    typer.echo("\n".join(lines))


@app.command("diff")
def diff_command(
    a: Annotated[str, typer.Argument(help="A lock file (or its directory), a run id, or a local image.")],
    b: Annotated[str, typer.Argument(help="The same kinds: what to compare A with.")],
    project: ProjectOpt = Path(),
    as_json: JsonOpt = False,
) -> None:
    """What changed between two locks, runs or images: packages, CUDA, driver floor, base; host, code, outputs."""
    from envlock.lock.diff import diff_locks  # noqa: PLC0415
    from envlock.run.diff import diff_runs  # noqa: PLC0415

    (kind_a, lock_a, run_a), (kind_b, lock_b, run_b) = _diff_side(a, project), _diff_side(b, project)
    changes = diff_runs(run_a, run_b, lock_a, lock_b) if run_a and run_b else diff_locks(lock_a, lock_b)
    if as_json:
        typer.echo(
            json.dumps(
                {"a": {"kind": kind_a, "name": a}, "b": {"kind": kind_b, "name": b}, **changes.as_dict()}, indent=2
            )
        )
        return
    typer.echo(f"{kind_a} {a} -> {kind_b} {b}")
    for line in changes.lines() or ["no differences"]:
        typer.echo(f"  {line}")


def _diff_side(name: str, project: Path) -> tuple[str, Lock, RunRecord | None]:
    """Read one side of `envlock diff`: a lock file, a run of the project, or a local image's embedded lock."""
    from envlock.image.plan import LOCK_PATH  # noqa: PLC0415
    from envlock.lock import lockfile  # noqa: PLC0415
    from envlock.run.records import RunNotFoundError, RunStore  # noqa: PLC0415

    path = Path(name)
    if path.is_dir() and (path / "envlock.lock").is_file():
        path = path / "envlock.lock"
    if path.is_file():
        return "lock", lockfile.read(path), None
    store = RunStore(project)
    try:
        record = store.load(name)
    except RunNotFoundError:
        record = None
    if record is not None:
        return "run", lockfile.read(store.directory(record.run_id) / "envlock.lock"), record
    from envlock.engine.docker import DockerEngine  # noqa: PLC0415

    engine = DockerEngine()
    if engine.image_id(name) is not None:
        text = engine.read_file(name, "/" + LOCK_PATH).decode("utf-8")
        return "image", lockfile.loads(text, Path(f"{name}:/{LOCK_PATH}")), None
    raise EnvlockError(
        f"{name!r} is not a lock file, a run of {project.resolve()}, or a local image",
        hint="pass a path to envlock.lock, a run id from `envlock runs`, or an image name:tag / ID",
    )


ArchiveOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--archive", help="An image archive to restore from (repeatable); .envlock/archives/ is searched too."
    ),
]


def _archive_path(project: Path, image_id: str) -> Path:
    return project / ".envlock" / "archives" / f"{image_id.removeprefix('sha256:')[:12]}.tar"


def _rebuild(lock_path: Path, repository: str, engine: DockerEngine) -> Callable[[], str]:
    """A rebuild from a lock copy, for restore's last resort (accepted only if it gives the recorded ID)."""

    def rebuild() -> str:
        from envlock.image.plan import plan_image  # noqa: PLC0415
        from envlock.lock import lockfile  # noqa: PLC0415
        from envlock.lock.targets import host_platform  # noqa: PLC0415

        plan = plan_image(lockfile.read(lock_path), lock_path.read_text(encoding="utf-8"), repository, host_platform())
        return _builder(engine).build(plan).image_id

    return rebuild


@app.command("archive")
def archive_command(
    target: Annotated[str, typer.Argument(help="A run id (its image) or a local image name / ID.")],
    project: ProjectOpt = Path(),
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Default: .envlock/archives/ID.tar")] = None,
) -> None:
    """Write a verified image archive for cold storage (registries expire old images)."""
    from envlock.engine.docker import DockerEngine  # noqa: PLC0415
    from envlock.image.restore import write_archive_file  # noqa: PLC0415
    from envlock.run.records import RunNotFoundError, RunStore  # noqa: PLC0415

    engine = DockerEngine()
    try:
        image_id = RunStore(project).load(target).image_id
    except RunNotFoundError:
        image_id = engine.image_id(target) or ""
    if not image_id or engine.image_id(image_id) is None:
        raise EnvlockError(
            f"{target!r} is neither a run with its image here nor a local image", hint="envlock restore it first"
        )
    out = output or _archive_path(project, image_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_archive_file(engine, image_id, out)
    typer.echo(f"archived {image_id} to {out} ({out.stat().st_size / 1e6:.1f} MB, verified)")


@app.command("restore")
def restore_command(
    target: Annotated[str, typer.Argument(help="A run id, a registry digest repo@sha256:…, or a lock file.")],
    project: ProjectOpt = Path(),
    archive: ArchiveOpt = None,
    no_rebuild: Annotated[bool, typer.Option("--no-rebuild", help="Only the engine, registry and archives.")] = False,
) -> None:
    """Make an exact image available again: engine, registry by digest, archive, or rebuild — verified by ID."""
    from envlock.engine.docker import DockerEngine  # noqa: PLC0415
    from envlock.image.catalog import read_images  # noqa: PLC0415
    from envlock.image.restore import restore_image  # noqa: PLC0415
    from envlock.run.records import RunNotFoundError, RunStore  # noqa: PLC0415

    engine = DockerEngine()
    if "@sha256:" in target:
        typer.echo(f"restored {engine.pull(target)} from the registry ({target})")
        return
    store = RunStore(project)
    archives = tuple(archive or ())
    if Path(target).is_file():
        from envlock.lock import lockfile  # noqa: PLC0415

        lock = lockfile.read(Path(target))
        known = read_images(project).get(lock.lock_hash, {})
        expected = known.get("image-id")
        reference = known.get("reference")
        repository = str(reference or "envlock-restored:").split(":")[0] or "envlock-restored"
        rebuild = _rebuild(Path(target), repository, engine)
        if expected is None:
            typer.echo(f"restored {rebuild()} by a rebuild from {target} (no image was recorded for this lock)")
            return
        digests = tuple(known.get("pushed", []))
    else:
        try:
            record = store.load(target)
        except RunNotFoundError as exc:
            raise EnvlockError(
                f"{target!r} is not a run of this project, a registry digest or a lock file",
                hint="pass a run id from `envlock runs`, repo@sha256:…, or a path to envlock.lock",
            ) from exc
        expected = record.image_id
        digests = tuple(record.repo_digests)
        reference = record.image_reference
        repository = reference.split(":")[0]
        rebuild = _rebuild(store.directory(record.run_id) / "envlock.lock", repository, engine)
    restored = restore_image(
        expected,
        engine=engine,
        repo_digests=digests,
        archives=(*archives, _archive_path(project, expected)),
        rebuild=None if no_rebuild else rebuild,
        reference=reference,
        report=_say,
    )
    typer.echo(f"restored {restored.image_id} from {restored.source}")


@app.command("reproduce")
def reproduce_command(
    run_id: Annotated[str, typer.Argument(help="The run to re-verify (a unique prefix of its id is enough).")],
    project: ProjectOpt = Path(),
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance for numbers in JSON/CSV outputs.")] = 0.0,
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance for numbers in JSON/CSV outputs.")] = 0.0,
    archive: ArchiveOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Run although the host fails the preflight.")] = False,
) -> None:
    """Restore a run's image, re-run its command on its code with its seed, and compare the outputs."""
    from envlock.run.records import RunStore  # noqa: PLC0415
    from envlock.run.reproduce import Tolerance, reproduce_run  # noqa: PLC0415
    from envlock.run.runner import RunRequest  # noqa: PLC0415

    store = RunStore(project)
    original = store.load(run_id)
    nodes = original.environment.get("ENVLOCK_NNODES", "1")
    if nodes != "1":
        raise EnvlockError(
            f"run {original.run_id} ran on {nodes} nodes: reproduce re-runs a command in one container, here",
            hint=f"submit it again (envlock submit --slurm -N {nodes} -- {' '.join(original.command)}), then compare: "
            f"envlock diff {original.run_id} NEW_RUN",
        )
    lock_path = store.directory(original.run_id) / "envlock.lock"
    outputs = tuple(original.outputs or (original.scheduler or {}).get("request", {}).get("outputs", ()))
    request = RunRequest(
        original.command, original.seed, force, None, outputs, tuple(original.passed_env), original.run_id
    )

    def rerun(code: Path) -> RunRecord:
        return _run_pinned(original, lock_path, request, code, store, archives=tuple(archive or ()))

    verdict = reproduce_run(original, store, project, rerun, Tolerance(rtol, atol))
    for line in verdict.lines():
        typer.echo(line)
    if not verdict.reproduced:
        raise typer.Exit(NOT_REPRODUCED)


@export_app.command("k8s", context_settings={"allow_interspersed_args": False})
def export_k8s(
    command: Annotated[list[str], typer.Argument(help="The command, after --: envlock export k8s -- python train.py")],
    project: ProjectOpt = Path(),
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
    platform: PlatformOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed: PYTHONHASHSEED and ENVLOCK_SEED.")] = 0,
    gpus: Annotated[int | None, typer.Option("--gpus", help="nvidia.com/gpu to request (default: 1 if CUDA).")] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", help="The Job's namespace.")] = None,
    code_claim: Annotated[
        str | None, typer.Option("--code-claim", help="A PersistentVolumeClaim with the project, mounted at /work.")
    ] = None,
) -> None:
    """A Kubernetes Job (JSON, for kubectl apply -f) running the lock's pushed image by digest."""
    from envlock.cluster.k8s import JobRequest, to_k8s_job  # noqa: PLC0415
    from envlock.fsutil import atomic_write_text  # noqa: PLC0415
    from envlock.image.catalog import read_images  # noqa: PLC0415
    from envlock.lock.project import check as check_lock  # noqa: PLC0415
    from envlock.lock.spec import load_spec  # noqa: PLC0415

    spec = load_spec(project)
    locked = check_lock(spec)
    known = read_images(spec.project_dir).get(locked.lock_hash, {})
    if not known.get("pushed"):
        raise EnvlockError(
            "the lock's image was never pushed: a cluster can only pull it from a registry, by digest",
            hint="envlock build --push (registry from [tool.envlock]) or envlock build --registry HOST/NAMESPACE",
        )
    request = JobRequest(
        list(command), known["pushed"][-1], known["image-id"], spec.name, seed, gpus, namespace, code_claim
    )
    job = to_k8s_job(locked, platform or locked.targets[0].platform, request)
    text = json.dumps(job, indent=2) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        atomic_write_text(output, text)
        typer.echo(f"wrote {output}: kubectl apply -f {output}", err=True)


def _fail(message: str, hint: str, code: int, details: tuple[str, ...] = ()) -> int:
    typer.secho(f"error: {message}", err=True, fg="red")
    for line in details:
        typer.echo(f"  {line}", err=True)
    if hint:
        typer.echo(f"hint: {hint}", err=True)
    return code


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; the one place that turns EnvlockErrors into messages."""
    args = list(sys.argv[1:] if argv is None else argv)
    obj = None
    if args[:1] == ["submit"]:
        args, obj = _split_submit(args)
    try:
        app(args=args, obj=obj, standalone_mode=True)  # typer reports its own usage errors and exits
    except CommandExited as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code == INTERRUPTED:  # typer turns Ctrl-C into a silent exit 130
            return _fail("interrupted", "envlock writes atomically: every file is as it was before", code)
        return code
    except EnvlockError as exc:
        return _fail(exc.message, exc.hint, exc.exit_code, exc.details)
    except KeyboardInterrupt:
        return _fail("interrupted", "envlock writes atomically: every file is as it was before", INTERRUPTED)
    return 0


def main() -> None:
    """Console-script entry point."""
    code = run()
    # Nothing is left to collect that matters at exit; skipping the final sweep of a large heap saves ~30 ms.
    gc.freeze()
    sys.exit(code)
