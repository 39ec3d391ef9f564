"""`envlock gc`: free the images, layers, bases, wheels and per-image folders no lock or run record of the given
projects needs."""

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
    """Remove images, layers, bases, wheels and per-image folders (bytecode, Charliecloud) no lock or run needs."""
    from envlock.image.gc import collect_garbage  # noqa: PLC0415
    from envlock.run.retention import needed_by  # noqa: PLC0415

    wiring = wiring_of(ctx)
    needed, broken = needed_by(projects or [Path()])
    for path in broken:
        wiring.say(f"warning: run record {path} cannot be read: its image is not protected")
    result = collect_garbage(needed, wiring.engine, wiring.cache, dry_run=dry_run, report=typer.echo)
    verb = "would free" if dry_run else "freed"
    typer.echo(f"{verb} {_size(result.freed)} ({len(result.removed)} entries; kept {len(needed.locks)} locks' needs)")
