"""`envlock lineage`: which runs made a result, from what, in which image, back to the raw inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from envlock.cli.options import JsonOpt, ProjectOpt
from envlock.cli.root import app


@app.command("lineage")
def lineage_command(
    target: Annotated[str, typer.Argument(help="A file a run wrote (found by its content), or a run id.")],
    project: ProjectOpt = Path(),
    as_json: JsonOpt = False,
) -> None:
    """The chain of runs behind a file or run, back to the raw inputs: each step's run, command, image, lock,
    commit, and the files it read (and from which step) and wrote, with their sha256."""
    from envlock.evidence.lineage import trace  # noqa: PLC0415
    from envlock.run.arguments import FileRef, RunRef, resolve  # noqa: PLC0415
    from envlock.run.records import RunStore  # noqa: PLC0415

    store = RunStore(project)
    lineage = trace(store, resolve(target, (FileRef, RunRef), store))
    if as_json:
        typer.echo(json.dumps(lineage.as_dict(), indent=2, sort_keys=True))
        return
    from envlock.report import shown  # noqa: PLC0415

    for line in lineage.lines():
        typer.echo(shown(line))
