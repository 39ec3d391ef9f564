"""`envlock gc`: free the images, layers, bases, wheels, per-image folders, own metadata and build-backend entries no
lock or run record of the given projects needs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from envlock.cli.root import app
from envlock.cli.wiring import wiring_of


def _size(count: int) -> str:
    amount = float(count)
    for unit in ("B", "KiB", "MiB"):
        if amount < 1024:
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"


@app.command()
def gc(
    ctx: typer.Context,
    projects: Annotated[
        list[Path] | None,
        typer.Option("--project", "-C", help="A project whose locks and runs to keep (repeatable; default: .)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")] = False,
) -> None:
    """Remove images, layers, bases, wheels, per-image folders (bytecode, Charliecloud), the projects' own metadata
    no run record names (.envlock/local-metadata) and build-backend venvs and metadata no package uses now, that no
    live project registered in the cache (and none named here) needs; report the roots whose project folder is
    gone."""
    from envlock.image.gc import collect_garbage  # noqa: PLC0415
    from envlock.run.gcneeds import needed_by_roots  # noqa: PLC0415

    wiring = wiring_of(ctx)
    kept = needed_by_roots(projects or [Path()], wiring.cache, dry_run=dry_run)
    for path in kept.broken:
        wiring.say(f"warning: run record {path} cannot be read: its image is not protected")
    for root in kept.dead:
        typer.echo(f"dead root: {root.project} is gone; what only it needed is freed")
    for root in kept.unreadable:
        wiring.say(
            f"warning: project {root.project} (registered by uid {root.owner}) cannot be read by you: no cache "
            "entry is removed (run gc as a user who can read every project)"
        )
    needed = kept.needed
    result = collect_garbage(needed, wiring.engine, wiring.cache, dry_run=dry_run, report=typer.echo)
    verb = "would free" if dry_run else "freed"
    typer.echo(
        f"{verb} {_size(result.freed)} ({len(result.removed)} entries; kept {len(needed.locks)} locks' needs of "
        f"{kept.live} live projects)"
    )
    if result.failed:
        wiring.say(
            f"warning: {len(result.failed)} entries could not be removed (files another user owns in a shared "
            "cache): their owner's `envlock gc`, or one run as root, frees them"
        )
