"""`envlock lock`, `show`, `export pylock`: from pyproject.toml to envlock.lock, and the lock read back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from envlock.cli.options import FileOutOpt, JsonOpt, OldOutputOpt, PlatformOpt, ProjectOpt, print_or_write
from envlock.cli.root import app, export_app
from envlock.cli.wiring import wiring_of
from envlock.paths import ProjectLayout


@app.command()
def lock(
    ctx: typer.Context,
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

        typer.echo(f"envlock.lock is up to date (lock {check_lock(spec).short_hash})")
        return
    from envlock.lock.onboard import follow_source  # noqa: PLC0415
    from envlock.lock.project import LockOptions, lock_project  # noqa: PLC0415

    wiring = wiring_of(ctx)
    wiring.register_root(spec.project_dir, spec.name)
    followed = follow_source(spec)
    if followed is not None and followed.imported is not None:
        typer.echo(f"{followed.imported.source.name} changed since it was imported: re-imported into pyproject.toml")
        for line in [*followed.changes, *(f"kept {k}" for k in followed.kept)]:
            typer.echo(f"  {line}")
        spec = load_spec(project)
    outcome = lock_project(
        spec,
        wiring.resolver(resolver),
        upstream=wiring.upstream,
        bases=wiring.bases,
        options=LockOptions(upgrade=upgrade, upgrade_packages=tuple(upgrade_package or ())),
        report=wiring.say,
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


@app.command()
def show(project: ProjectOpt = Path(), as_json: JsonOpt = False, platform: PlatformOpt = None) -> None:
    """What is locked, per platform, with the CUDA / driver / GPU architecture summary."""
    from envlock.cli.render import lock_summary, render_lock  # noqa: PLC0415
    from envlock.lock import lockfile  # noqa: PLC0415
    from envlock.lock.project import staleness  # noqa: PLC0415

    locked = lockfile.read(ProjectLayout(project).lock)
    platforms: list[str] = [platform] if platform else [t.platform for t in locked.targets]
    for name in platforms:
        locked.target(name)
    stale = staleness(project, locked)
    if as_json:
        typer.echo(json.dumps(lock_summary(locked, platforms, stale), indent=2, default=str))
    else:
        typer.echo(render_lock(locked, platforms, stale))


@export_app.command("pylock")
def export_pylock(
    project: ProjectOpt = Path(), out: FileOutOpt = None, old_output: OldOutputOpt = None, platform: PlatformOpt = None
) -> None:
    """The lock as a PEP 751 pylock.toml, for uv, pip and other installers."""
    from envlock.lock import lockfile  # noqa: PLC0415
    from envlock.lock.export import to_pylock  # noqa: PLC0415

    text = to_pylock(lockfile.read(ProjectLayout(project).lock), [platform] if platform else None)
    if (output := print_or_write(text, out, old_output)) is not None:
        typer.echo(f"wrote {output}", err=True)
