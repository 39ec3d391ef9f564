"""`envlock runs`, `runs show`, `runs wait`: the project's run records, settled against Slurm when open."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from envlock.cli.options import JsonOpt, ProjectOpt, RunIdArg, RunsProjectOpt
from envlock.cli.root import CommandExited, runs_app
from envlock.cli.wiring import Wiring, wiring_of

if TYPE_CHECKING:
    from envlock.cluster.slurm import JobState
    from envlock.run.records import RunRecord, RunStore


def _settle(
    wiring: Wiring, store: RunStore, records: list[RunRecord]
) -> tuple[dict[str, JobState], dict[str, RunRecord]]:
    from envlock.cluster.submit import settle  # noqa: PLC0415

    return settle(
        store,
        records,
        lambda: wiring.slurm,
        wiring.remove_container,
        wiring.say,
        evidence=wiring.evidence(strict=False),
    )


def _store(ctx: typer.Context, project: Path | None) -> RunStore:
    from envlock.run.records import RunStore  # noqa: PLC0415

    return RunStore(project or wiring_of(ctx).runs_project or Path())


@runs_app.callback(invoke_without_command=True)
def runs_list(ctx: typer.Context, project: ProjectOpt = Path(), as_json: JsonOpt = False) -> None:
    """The project's runs, oldest first (a table, or --json)."""
    wiring = wiring_of(ctx)
    wiring.runs_project = project  # `envlock runs -C DIR show ID` means that project for show too
    if ctx.invoked_subcommand:
        return
    from envlock.cli.render import runs_table  # noqa: PLC0415
    from envlock.cluster.submit import describe  # noqa: PLC0415
    from envlock.run.records import RunStore  # noqa: PLC0415

    store = RunStore(project)
    records, unreadable = store.scan()
    live, settled = _settle(wiring, store, records)
    records = [settled.get(r.run_id, r) for r in records]
    for broken in unreadable:
        wiring.say(f"warning: skipped unreadable run record {broken}")
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in records], indent=2))
    elif not records:
        typer.echo("no runs yet: envlock run -- COMMAND")
    else:
        typer.echo(runs_table(records, {r.run_id: describe(r, live) for r in records}))


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
    from envlock.run.records import exit_status, wait_until_final  # noqa: PLC0415

    wiring = wiring_of(ctx)
    store = _store(ctx, project)
    run = store.load(run_id).run_id

    def current() -> RunRecord:
        record = store.load(run)
        return _settle(wiring, store, [record])[1].get(run, record)

    record = wait_until_final(current, timeout, poll=2.0)
    nodes = {rank: n for rank, n in store.node_records(run).items() if n.status != "finished"}
    typer.echo(
        f"run {run}: {record.status} (exit {record.exit_code})"
        + (f": {record.error}" if record.error else "")
        + "".join(f"; node {rank}: {n.status} (exit {n.exit_code})" for rank, n in nodes.items())
    )
    raise CommandExited(exit_status(record))


@runs_app.command("show")
def runs_show(ctx: typer.Context, run_id: RunIdArg, project: RunsProjectOpt = None, as_json: JsonOpt = False) -> None:
    """One run record in full."""
    from envlock.cli.render import run_details  # noqa: PLC0415

    store = _store(ctx, project)
    record = store.load(run_id)
    live, closed = _settle(wiring_of(ctx), store, [record])
    record = closed.get(record.run_id, record)
    if as_json:
        verdict = store.verdict(record.run_id) if record.reproduces else None
        document = record.as_dict() | ({"verdict": verdict} if verdict else {})
        typer.echo(json.dumps(document, indent=2, sort_keys=True))
    else:
        typer.echo(run_details(record, store, live))
