"""`envlock build`, `base list|build`, `archive`, `restore`: the lock's image, made, kept and brought back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from envlock.cli.options import ArchiveOpt, JsonOpt, PlatformOpt, ProjectOpt
from envlock.cli.root import app, base_app
from envlock.cli.wiring import wiring_of
from envlock.errors import UsageError

if TYPE_CHECKING:
    from envlock.report import Progress


class _Bars:
    """rich progress bars for downloads, made at the first byte reported: a no-op build never imports rich."""

    def __init__(self) -> None:
        self.bars: Any = None
        self.tasks: dict[str, Any] = {}

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if self.bars is None:
            from rich.console import Console  # noqa: PLC0415
            from rich.progress import BarColumn, DownloadColumn, TextColumn  # noqa: PLC0415
            from rich.progress import Progress as Bars  # noqa: PLC0415

            # On stderr: stdout is for results (`built NAME (ID)`), which scripts read.
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
            self.bars = Bars(*columns, transient=True, console=Console(stderr=True))
            self.bars.start()
        if name not in self.tasks:
            self.tasks[name] = self.bars.add_task(name, total=total)
        self.bars.update(self.tasks[name], completed=done)

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bars is not None:
            self.bars.stop()


def _bars() -> tuple[_Bars, Progress]:
    """The bars (a context manager) and the callback the core reports bytes to: the same object."""
    bars = _Bars()
    return bars, bars


@app.command()
def build(
    ctx: typer.Context,
    project: ProjectOpt = Path(),
    platform: PlatformOpt = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Make every layer afresh.")] = False,
    push: Annotated[bool, typer.Option("--push", help="Push to the registry ([tool.envlock] registry).")] = False,
    registry: Annotated[
        str | None, typer.Option("--registry", help="Push here instead: host[:port][/namespace].", show_default=False)
    ] = None,
) -> None:
    """Build the lock's image, tagged <name>:<lock-hash-prefix>; a no-op when it exists."""
    from envlock.image.build import build_and_push  # noqa: PLC0415
    from envlock.image.registry import split_target  # noqa: PLC0415
    from envlock.lock.project import check as check_lock  # noqa: PLC0415
    from envlock.lock.spec import load_spec  # noqa: PLC0415
    from envlock.lock.targets import host_platform  # noqa: PLC0415

    wiring = wiring_of(ctx)
    spec = load_spec(project)
    locked = check_lock(spec)
    target = registry or spec.registry
    if (push or registry) and not target:
        raise UsageError(
            "--push needs a registry", hint='set registry = "host[:port]/namespace" in [tool.envlock], or --registry'
        )
    bars, progress = _bars()
    with bars:
        outcome, pushed = build_and_push(
            locked,
            spec.name,
            platform or host_platform(),
            builder=wiring.builder([spec.index_url, *spec.extra_index_urls], progress),
            project_dir=spec.project_dir,
            no_cache=no_cache,
            push_to=(wiring.registry(split_target(target)[0]), target) if target and (push or registry) else None,
        )
    typer.echo(f"{'built' if outcome.built else 'already built:'} {outcome.reference} ({outcome.image_id})")
    if pushed:
        typer.echo(f"pushed {pushed}")


@base_app.command("list")
def base_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The base recipes and the bases built from them on this machine."""
    from envlock.cli.render import base_rows  # noqa: PLC0415

    rows = base_rows(wiring_of(ctx).bases.built())
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
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Recipe name, e.g. debian-bookworm.")],
    platform: PlatformOpt = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Build even when already built.")] = False,
    load: Annotated[bool, typer.Option("--load", help="Also load it into Docker as envlock-base/NAME:…")] = False,
) -> None:
    """Build a base from its recipe (mmdebstrap, SOURCE_DATE_EPOCH) into envlock's store."""
    from envlock.lock.recipes import load_recipe, recipe_names  # noqa: PLC0415
    from envlock.lock.targets import host_platform  # noqa: PLC0415

    if name not in recipe_names():
        raise UsageError(f"no base recipe {name!r}", hint=f"known recipes: {', '.join(recipe_names())}")
    wiring = wiring_of(ctx)
    chosen = platform or host_platform()
    wiring.say(f"building base {name} for {chosen} with mmdebstrap")
    built = wiring.bases.ensure(load_recipe(name), chosen, rebuild=rebuild)
    typer.echo(f"base {name} {chosen}: {built.diff_id} ({len(built.packages)} Debian packages)")
    if load:
        from envlock.image.build import load_base  # noqa: PLC0415

        typer.echo(f"loaded as {load_base(built, wiring.engine)}")


@app.command("archive")
def archive_command(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="A run id (its image) or a local image name / ID.")],
    project: ProjectOpt = Path(),
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Default: .envlock/archives/ID.tar")] = None,
) -> None:
    """Write a verified image archive for cold storage (registries expire old images)."""
    from envlock.image.restore import write_archive_file  # noqa: PLC0415
    from envlock.paths import ProjectLayout  # noqa: PLC0415
    from envlock.run.pinned import archive_source  # noqa: PLC0415

    engine = wiring_of(ctx).engine
    image_id = archive_source(target, project, engine)
    out = output or ProjectLayout(project).archive_for(image_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_archive_file(engine, image_id, out)
    typer.echo(f"archived {image_id} to {out} ({out.stat().st_size / 1e6:.1f} MB, verified)")


@app.command("restore")
def restore_command(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="A run id, a registry digest repo@sha256:…, or a lock file.")],
    project: ProjectOpt = Path(),
    archive: ArchiveOpt = None,
    no_rebuild: Annotated[bool, typer.Option("--no-rebuild", help="Only the engine, registry and archives.")] = False,
) -> None:
    """Make an exact image available again: engine, registry by digest, archive, or rebuild — verified by ID."""
    from envlock.image.restore import restore_image  # noqa: PLC0415
    from envlock.paths import ProjectLayout  # noqa: PLC0415
    from envlock.run.pinned import restore_target  # noqa: PLC0415

    wiring = wiring_of(ctx)
    if "@sha256:" in target:
        typer.echo(f"restored {wiring.engine.pull(target)} from the registry ({target})")
        return
    wanted = restore_target(target, project, wiring.run_tools())
    if wanted.image_id is None:
        if no_rebuild:
            raise UsageError(
                f"no image was recorded for the lock {target}: only a rebuild can bring it",
                hint="leave out --no-rebuild",
            )
        typer.echo(f"restored {wanted.rebuild()} by a rebuild from {target} (no image was recorded for this lock)")
        return
    restored = restore_image(
        wanted.image_id,
        engine=wiring.engine,
        repo_digests=wanted.repo_digests,
        archives=(*(archive or ()), ProjectLayout(project).archive_for(wanted.image_id)),
        rebuild=None if no_rebuild else wanted.rebuild,
        reference=wanted.reference,
        report=wiring.say,
    )
    typer.echo(f"restored {restored.image_id} from {restored.source}")
