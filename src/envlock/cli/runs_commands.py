"""`envlock runs`, `runs show`, `runs wait`: the project's run records, settled against Slurm when open."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from envlock.cli.options import AllowUnsignedOpt, JsonOpt, ProjectOpt, PublicKeyOpt, RunIdArg, RunsProjectOpt
from envlock.cli.root import CommandExited, runs_app
from envlock.cli.wiring import Wiring, wiring_of
from envlock.report import shown, shown_lines

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

    # `envlock runs -C DIR show ID`: the group's -C, read from the parsed options (no state kept between them).
    given = ctx.parent.params.get("project") if ctx.parent is not None else None
    return RunStore(project or (Path(given) if isinstance(given, str | Path) else None) or Path())


@runs_app.callback(invoke_without_command=True)
def runs_list(
    ctx: typer.Context,
    project: ProjectOpt = Path(),
    as_json: JsonOpt = False,
    registry: Annotated[
        str | None,
        typer.Option("--registry", help="List the runs published in REGISTRY/REPO instead.", show_default=False),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option("--image", help="--registry: only the runs of this image (its sha256:…).", show_default=False),
    ] = None,
    lock: Annotated[
        str | None,
        typer.Option("--lock", help="--registry: only the runs of this lock (its hash, 12+ hex).", show_default=False),
    ] = None,
) -> None:
    """The project's runs, oldest first (a table, or --json); with --registry, the runs published there."""
    wiring = wiring_of(ctx)
    if ctx.invoked_subcommand:
        return
    if registry is not None or image is not None or lock is not None:
        _published(wiring, registry, image, lock, as_json=as_json)
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
        typer.echo(shown_lines(runs_table(records, {r.run_id: describe(r, live) for r in records})))


def _published(wiring: Wiring, registry: str | None, image: str | None, lock: str | None, *, as_json: bool) -> None:
    """`envlock runs --registry REGISTRY/REPO [--image DIGEST | --lock HASH]`."""
    from dataclasses import asdict  # noqa: PLC0415

    from envlock.errors import UsageError  # noqa: PLC0415
    from envlock.evidence.published import list_runs, location_of  # noqa: PLC0415

    if registry is None:
        raise UsageError("--image and --lock are for --registry", hint="envlock runs --registry REGISTRY/REPO --lock …")
    if image is not None and lock is not None:
        raise UsageError("--image and --lock: give one of them", hint="an image's runs, or a lock's")
    place = location_of(registry)
    runs = list_runs(wiring.registry(place.host), place, image=image, lock=lock, report=wiring.say)
    if as_json:
        typer.echo(json.dumps([asdict(run) for run in runs], indent=2))
    elif not runs:
        which = " for that image" if image else " for that lock" if lock else ""
        typer.echo(f"no runs published in {registry}{which}")
    else:
        for run in runs:
            lock_hash = run.lock_hash.removeprefix("sha256:")[:12]
            typer.echo(
                shown(f"{run.run_id:<24} {run.status:<11} lock {lock_hash}  image {run.subject[:19]}  {run.ref}")
            )


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
    from envlock.run.arguments import resolve_run  # noqa: PLC0415
    from envlock.run.records import exit_status, wait_until_final  # noqa: PLC0415

    wiring = wiring_of(ctx)
    store = _store(ctx, project)
    run = resolve_run(run_id, store).run_id

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
def runs_show(
    ctx: typer.Context,
    run_id: RunIdArg,
    project: RunsProjectOpt = None,
    as_json: JsonOpt = False,
    verified: Annotated[
        bool,
        typer.Option("--verified", help="Show the record as its attestation signed it, after verifying it."),
    ] = False,
    key: PublicKeyOpt = None,
    allow_unsigned: AllowUnsignedOpt = False,
) -> None:
    """One run record in full (--verified: the signed record, shown only when its evidence holds)."""
    from envlock.cli.render import run_details  # noqa: PLC0415
    from envlock.run.arguments import resolve_run  # noqa: PLC0415

    store = _store(ctx, project)
    record = resolve_run(run_id, store).record
    if verified:
        _show_verified(ctx, store, record, key, as_json=as_json, allow_unsigned=allow_unsigned)
        return
    live, closed = _settle(wiring_of(ctx), store, [record])
    record = closed.get(record.run_id, record)
    if as_json:
        verdict = store.verdict(record.run_id) if record.reproduces else None
        document = record.as_dict() | ({"verdict": verdict} if verdict else {})
        typer.echo(json.dumps(document, indent=2, sort_keys=True))
    else:
        typer.echo(shown_lines(run_details(record, store, live)))


def _show_verified(
    ctx: typer.Context,
    store: RunStore,
    record: RunRecord,
    keys: list[Path] | None,
    *,
    as_json: bool,
    allow_unsigned: bool,
) -> None:
    """`runs show --verified`: verify first; then render the record the attestation carries, never the file."""
    from envlock.cli.render import run_details  # noqa: PLC0415
    from envlock.errors import VerificationError  # noqa: PLC0415
    from envlock.evidence.attest import RunPlaces, verify_run_dir  # noqa: PLC0415
    from envlock.evidence.trust import load_trust  # noqa: PLC0415
    from envlock.run.records import RunRecord  # noqa: PLC0415

    wiring = wiring_of(ctx)
    trust = load_trust(keys or [], environ=wiring.environ, project_dir=store.project_dir)

    def present(image_id: str) -> bool | None:
        from envlock.errors import EngineError  # noqa: PLC0415

        try:
            return None if wiring.engine.image_id(image_id) is None else True
        except EngineError:
            return None

    places = RunPlaces.of_project(store.project_dir, store.directory(record.run_id))
    checks = verify_run_dir(places, trust=trust, image_present=present)
    line = checks.require(allow_unsigned=allow_unsigned)  # refuses (26, 29, 30) before anything is shown
    signed = checks.signed_record
    if signed is None:
        raise VerificationError(f"the attestation of run {record.run_id} carries no record")
    shown = RunRecord.from_dict(signed, "the signed record")
    wiring.say(line)
    if as_json:
        typer.echo(json.dumps(shown.as_dict(), indent=2, sort_keys=True))
    else:
        typer.echo(shown_lines(run_details(shown, store, {}, nodes=False)))  # only what the attestation covers
