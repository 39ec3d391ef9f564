"""`envlock build`, `base list|build`, `archive`, `restore`: the lock's image, made, kept and brought back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from envlock.cli.options import (
    ArchiveOpt,
    JsonOpt,
    KeyOpt,
    OldOutputOpt,
    PlatformOpt,
    ProjectOpt,
    PublicKeyOpt,
    out_file,
    out_option,
)
from envlock.cli.root import app, base_app
from envlock.cli.wiring import Wiring, wiring_of
from envlock.errors import UsageError

if TYPE_CHECKING:
    from envlock.cli.wiring import Attester
    from envlock.image.plan import ImagePlan
    from envlock.image.registry import Registry
    from envlock.lock.lockfile import Lock
    from envlock.lock.spec import Spec
    from envlock.report import Progress


class _Bars:
    """rich progress bars for downloads, made at the first byte reported: a no-op build never imports rich."""

    def __init__(self) -> None:
        import threading  # noqa: PLC0415

        self.bars: Any = None
        self.tasks: dict[str, Any] = {}
        self.lock = threading.Lock()  # downloads report from several threads

    def __call__(self, name: str, done: int, total: int | None) -> None:
        with self.lock:
            self._report(name, done, total)

    def _report(self, name: str, done: int, total: int | None) -> None:
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
    key: KeyOpt = None,
) -> None:
    """Build the lock's image, tagged <name>:<lock-hash-prefix>; a no-op when it exists."""
    from envlock.image.build import build_and_push  # noqa: PLC0415
    from envlock.image.plan import plan_image  # noqa: PLC0415
    from envlock.image.registry import split_target  # noqa: PLC0415
    from envlock.lock.project import check as check_lock  # noqa: PLC0415
    from envlock.lock.spec import load_spec  # noqa: PLC0415
    from envlock.lock.targets import host_platform  # noqa: PLC0415

    wiring = wiring_of(ctx)
    signer = wiring.evidence(key)
    spec = load_spec(project)
    wiring.register_root(spec.project_dir, spec.name)
    locked = check_lock(spec)
    target = registry or spec.registry
    if (push or registry) and not target:
        raise UsageError(
            "--push needs a registry", hint='set registry = "host[:port]/namespace" in [tool.envlock], or --registry'
        )
    push_to = (wiring.registry(split_target(target)[0]), target) if target and (push or registry) else None
    if platform == "all":
        _build_all(wiring, spec, locked, no_cache=no_cache, push_to=push_to, signer=signer)
        return
    bars, progress = _bars()
    with bars:
        outcome, pushed = build_and_push(
            locked,
            spec.name,
            platform or host_platform(),
            builder=wiring.builder([spec.index_url, *spec.extra_index_urls], progress),
            project_dir=spec.project_dir,
            evidence=signer,
            no_cache=no_cache,
            push_to=push_to,
        )
    typer.echo(f"{'built' if outcome.built else 'already built:'} {outcome.reference} ({outcome.image_id})")
    if (platform or host_platform()) == host_platform():
        wiring.compile_bytecode(outcome.image_id)  # the first run imports from bytecode like the tenth
    if pushed:
        typer.echo(f"pushed {pushed}")
        plan = plan_image(locked, spec.name, platform or host_platform())
        _publish(wiring, spec.project_dir, plan, outcome.image_id, pushed)


def _build_all(
    wiring: Wiring,
    spec: Spec,
    locked: Lock,
    *,
    no_cache: bool,
    push_to: tuple[Registry, str] | None,
    signer: Attester,
) -> None:
    """`envlock build --platform all`: every platform of the lock, each attested, then one index when pushed."""
    from envlock.image.multiarch import build_platforms  # noqa: PLC0415
    from envlock.image.plan import plan_image  # noqa: PLC0415

    bars, progress = _bars()
    with bars:
        images, index = build_platforms(
            locked,
            spec.name,
            [t.platform for t in locked.targets],
            builder=wiring.builder([spec.index_url, *spec.extra_index_urls], progress),
            project_dir=spec.project_dir,
            evidence=signer,
            no_cache=no_cache,
            push_to=push_to,
        )
    for image in images:
        built = "built" if image.outcome.built else "already built:"
        typer.echo(f"{built} {image.outcome.reference} ({image.outcome.image_id}) for {image.platform}")
        if image.pushed:
            typer.echo(f"pushed {image.pushed}")
            plan = plan_image(locked, spec.name, image.platform)
            _publish(wiring, spec.project_dir, plan, image.outcome.image_id, image.pushed)
    if index:
        typer.echo(f"pushed index {index}")


def _publish(wiring: Wiring, project_dir: Path, plan: ImagePlan, image_id: str, pushed: str) -> None:
    """A pushed image's SBOM and provenance (written by the build core) as referrers in the registry."""
    import json  # noqa: PLC0415

    from envlock.image.provenance import attestation_path  # noqa: PLC0415
    from envlock.image.referrers import publish, split_pushed  # noqa: PLC0415
    from envlock.signing import canonical  # noqa: PLC0415

    document = json.loads(attestation_path(project_dir, image_id).read_text(encoding="utf-8"))
    publish(wiring.registry(split_pushed(pushed)[0]), pushed, plan.sbom, canonical(document))
    typer.echo(f"pushed SBOM and provenance as referrers of {pushed}")


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
    out: Annotated[Path | None, out_option("The archive to write (default: .envlock/archives/ID.tar).")] = None,
    old_output: OldOutputOpt = None,
) -> None:
    """Write a verified image archive for cold storage (registries expire old images)."""
    from envlock.image.restore import write_archive_file  # noqa: PLC0415
    from envlock.paths import ProjectLayout  # noqa: PLC0415
    from envlock.run.arguments import ImageRef, RunRef, resolve  # noqa: PLC0415
    from envlock.run.records import RunStore  # noqa: PLC0415
    from envlock.run.service import archive_source  # noqa: PLC0415

    engine = wiring_of(ctx).engine
    image_id = archive_source(resolve(target, (RunRef, ImageRef), RunStore(project), lambda: engine), engine)
    out = out_file(out, old_output) or ProjectLayout(project).archive_for(image_id)
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
    key: PublicKeyOpt = None,
) -> None:
    """Make an exact image available again: engine, registry by digest, archive, or rebuild — verified by ID."""
    from envlock.image.restore import restore_image  # noqa: PLC0415
    from envlock.paths import ProjectLayout  # noqa: PLC0415
    from envlock.run.arguments import DigestRef, LockRef, RunRef, resolve  # noqa: PLC0415
    from envlock.run.records import RunStore  # noqa: PLC0415
    from envlock.run.service import restore_target  # noqa: PLC0415

    wiring = wiring_of(ctx)
    named = resolve(target, (DigestRef, LockRef, RunRef), RunStore(project))
    if isinstance(named, DigestRef):
        image_id = wiring.engine.pull(named.text)
        typer.echo(f"restored {image_id} from the registry ({named.text})")
        _check_referrers(wiring, project, named.text, image_id, key)
        return
    wanted = restore_target(named, project, wiring.run_tools())
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


def _check_referrers(wiring: Wiring, project: Path, pushed: str, image_id: str, keys: list[Path] | None) -> None:
    """After a pull by digest: the SBOM and provenance that refer to it, checked and kept in .envlock/attestations/."""
    from envlock.evidence.trust import load_trust  # noqa: PLC0415
    from envlock.fsutil import atomic_write_bytes  # noqa: PLC0415
    from envlock.image.provenance import attestation_path, check_pulled  # noqa: PLC0415
    from envlock.image.referrers import retrieve, split_pushed  # noqa: PLC0415
    from envlock.signing import write_envelope  # noqa: PLC0415

    host, _, digest = split_pushed(pushed)
    found = retrieve(wiring.registry(host), pushed)
    if found.attestation is None:
        wiring.say(f"no provenance refers to {pushed} in the registry (pushed before envlock attached them?)")
    else:
        trust = load_trust(keys or [], environ=wiring.environ, project_dir=project)
        trusted = [k.key for k in trust.keys]
        typer.echo(check_pulled(found.attestation, digest, image_id, trusted, required=bool(keys)))
        write_envelope(attestation_path(project, image_id), found.attestation)
    if found.sbom is not None:
        sbom_path = attestation_path(project, image_id).with_suffix("").with_suffix(".cdx.json")
        atomic_write_bytes(sbom_path, found.sbom)
        typer.echo(f"SBOM from the registry in {sbom_path}")
