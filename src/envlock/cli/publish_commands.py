"""`envlock push`, `pull`: a run's evidence published beside its image in the registry, and brought back."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from envlock.cli.options import AllowUnsignedOpt, ProjectOpt, PublicKeyOpt, RunIdArg
from envlock.cli.root import app
from envlock.cli.wiring import Wiring, wiring_of
from envlock.report import shown

if TYPE_CHECKING:
    from envlock.evidence.published import Published

ToOpt = Annotated[
    str | None,
    typer.Option(
        "--to",
        help="REGISTRY/REPO to publish to (it must hold the run's image); default: where the run's image was pushed.",
        show_default=False,
    ),
]
RefArg = Annotated[str, typer.Argument(help="A published run: REGISTRY/REPO@sha256:… (as `envlock push` printed).")]


def publish(wiring: Wiring, project: Path, run_id: str, to: str | None) -> Published:
    """Push one run's evidence and say where it went (also `envlock run --push`)."""
    from envlock.evidence.published import OUTPUT_MAX_BYTES, publish_run  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="envlock-push-") as scratch:
        published = publish_run(
            project, run_id, registry=wiring.registry, engine=lambda: wiring.engine, scratch=Path(scratch), to=to
        )
    for path in published.left_out:
        wiring.say(f"output {path}: over {OUTPUT_MAX_BYTES >> 20} MiB, published by digest only")
    typer.echo(f"pushed run {run_id} ({published.size} bytes) as a referrer of {published.subject}: {published.ref}")
    return published


@app.command("push")
def push_command(
    ctx: typer.Context,
    run_id: RunIdArg,
    project: ProjectOpt = Path(),
    to: ToOpt = None,
) -> None:
    """Publish a finished run's evidence (record, attestation, lock, log, outputs, saved code, inputs manifest) as
    an OCI artifact referring to its image in the registry."""
    from envlock.run.arguments import resolve_run  # noqa: PLC0415
    from envlock.run.records import RunStore  # noqa: PLC0415

    publish(wiring_of(ctx), project, resolve_run(run_id, RunStore(project)).run_id, to)


@app.command("pull")
def pull_command(
    ctx: typer.Context,
    ref: RefArg,
    project: ProjectOpt = Path(),
    key: PublicKeyOpt = None,
    allow_unsigned: AllowUnsignedOpt = False,
) -> None:
    """Bring a published run into this project's run store, verified first under your trust (--key, your store).
    Its bundle streams into envlock's scratch, checked by digest on the way; one over 4 GiB is refused
    (ENVLOCK_PULL_MAX_BYTES sets another cap)."""
    from envlock.evidence.bundle import unpacked  # noqa: PLC0415
    from envlock.evidence.published import (  # noqa: PLC0415
        downloaded,
        parse_ref,
        pull_cap,
        store_pulled,
        verify_fetched,
    )
    from envlock.evidence.trust import load_trust  # noqa: PLC0415
    from envlock.run.arguments import DigestRef, resolve  # noqa: PLC0415
    from envlock.run.records import RunStore  # noqa: PLC0415

    wiring = wiring_of(ctx)
    ref = resolve(ref, (DigestRef,), RunStore(project)).text
    place, _ = parse_ref(ref)
    # From elsewhere: the keys named here and the user's own store, never a folder of keys that came with it.
    trust = load_trust(key or [], environ=wiring.environ, project_dir=None)
    cap = pull_cap(wiring.environ)
    registry = wiring.registry(place.host)
    with (
        downloaded(registry, ref, wiring.say, cache=wiring.cache, max_bytes=cap) as fetched,
        unpacked(fetched.bundle) as found,
    ):
        verdict = verify_fetched(found, fetched, trust, lambda: None).require(allow_unsigned=allow_unsigned)
        run_id = store_pulled(found, fetched.bundle, project)
    typer.echo(shown(verdict))
    typer.echo(f"pulled run {run_id} ({fetched.size} bytes) into {RunStore(project).directory(run_id)}")
