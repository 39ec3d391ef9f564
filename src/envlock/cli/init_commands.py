"""`envlock init`: onboard a project from its requirements file or another tool's lock in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from envlock.cli.options import ProjectOpt
from envlock.cli.root import app


@app.command()
def init(
    project: ProjectOpt = Path(),
    source: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help=(
                "uv.lock, poetry.lock, pdm.lock, Pipfile.lock, pylock.toml, requirements.txt, Pipfile or "
                "environment.yml (default: the first found, in this order)."
            ),
            show_default=False,
        ),
    ] = None,
    gitignore: Annotated[bool, typer.Option("--gitignore", help="Append the proposed lines to .gitignore.")] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Drop [tool.envlock] entries the source no longer names (kept otherwise).")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would change; write nothing.")] = False,
) -> None:
    """Merge the project's requirements or lock into [tool.envlock] in pyproject.toml; keeps your own entries."""
    from envlock.lock.credentials import mask  # noqa: PLC0415
    from envlock.lock.onboard import init_project  # noqa: PLC0415

    outcome = init_project(project, source, write_gitignore=gitignore, prune=prune, dry_run=dry_run)
    imported = outcome.imported
    if imported is not None:
        typer.echo(f"imported {imported.source.name}", err=True)
    if outcome.changes:
        verb = "would create" if dry_run and outcome.created else "would update" if dry_run else None
        verb = verb or ("created" if outcome.created else "updated")
        typer.echo(f"{verb} {outcome.pyproject} [tool.envlock] (from {_source_name(outcome)}):")
        for line in outcome.changes:
            typer.echo(f"  {line}")
    else:
        typer.echo(f"nothing changed: {outcome.pyproject} already says what {_source_name(outcome)} says")
    for line in outcome.kept:
        typer.echo(f"  kept {line} (not in {_source_name(outcome)}; --prune drops it)")
    if imported is not None:
        for item in imported.not_handled:
            typer.echo(f"  not handled: {mask(item)}")
        if imported.not_handled:
            typer.echo(
                "  hint: add PyPI equivalents to [tool.envlock] requirements, Debian ones to system-packages",
            )
        for note in imported.notes:
            typer.echo(f"  note: {mask(note)}")
    if outcome.gitignore:
        action = "added to .gitignore" if outcome.gitignore_written else "propose for .gitignore (--gitignore adds)"
        typer.echo(f"{action}: {' '.join(outcome.gitignore)}")
    if outcome.outputs:
        declared = ", ".join(f'"{o}"' for o in outcome.outputs)
        typer.echo(f"outputs found: declare them with outputs = [{declared}] to hash them into each run record")
    if dry_run:
        typer.echo("dry run: nothing written")
        return
    typer.echo(
        "commit: pyproject.toml and envlock.lock (.envlock/runs/ run records are optional to commit); "
        "next: envlock lock"
    )


def _source_name(outcome: object) -> str:
    imported = getattr(outcome, "imported", None)
    return imported.source.name if imported is not None else "[project]"
