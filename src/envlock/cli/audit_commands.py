"""`envlock sbom`, `key`, `attest`, `verify`, `bundle`, `report`: the audit trail an independent party can check."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from envlock.cli.options import (
    AllowUnsignedOpt,
    FileOutOpt,
    JsonOpt,
    KeyOpt,
    OldOutputOpt,
    PlatformOpt,
    ProjectOpt,
    PublicKeyOpt,
    RunIdArg,
    out_file,
    out_option,
    print_or_write,
    required_out,
)
from envlock.cli.root import app, key_app, trust_app
from envlock.cli.wiring import Wiring, wiring_of

if TYPE_CHECKING:
    from envlock.engine.docker import Engine
    from envlock.evidence.attest import Checks
    from envlock.evidence.trust import Trust


def _engine_or_none(wiring: Wiring) -> Engine | None:
    from envlock.errors import EngineError  # noqa: PLC0415

    try:
        engine = wiring.engine
        engine.image_id("sha256:" + "0" * 64)  # reach it now: an engine that is down is "not checked", not an error
    except EngineError:
        return None
    return engine


@app.command("sbom")
def sbom_command(
    ctx: typer.Context,
    project: ProjectOpt = Path(),
    platform: PlatformOpt = None,
    out: FileOutOpt = None,
    old_output: OldOutputOpt = None,
) -> None:
    """The lock's SBOM: CycloneDX 1.6 JSON (Python packages, Debian packages of the base, CUDA stack, base)."""
    from envlock.image.sbom import sbom_json  # noqa: PLC0415
    from envlock.lock.lockfile import read  # noqa: PLC0415
    from envlock.lock.spec import load_spec  # noqa: PLC0415
    from envlock.lock.targets import host_platform  # noqa: PLC0415

    spec = load_spec(project)
    lock = read(spec.lock_path)
    text = sbom_json(lock, platform or host_platform())
    if (output := print_or_write(text, out, old_output)) is not None:
        wiring_of(ctx).say(f"wrote {output}")


@key_app.command("generate")
def key_generate(
    ctx: typer.Context,
    out: Annotated[Path | None, out_option("Default: ~/.config/envlock/signing-key.pem")] = None,
    old_output: OldOutputOpt = None,
    kind: Annotated[str, typer.Option("--type", help="ed25519 (default) or ecdsa-p256.")] = "ed25519",
) -> None:
    """Make a signing key (mode 0600, new folders 0700) and its public key beside it (.pub)."""
    from envlock.errors import UsageError  # noqa: PLC0415
    from envlock.signing import default_key_path, generate_key, public_path, work_tree_of  # noqa: PLC0415

    if kind not in ("ed25519", "ecdsa-p256"):
        raise UsageError(f"unknown key type {kind!r}", hint="--type ed25519 or --type ecdsa-p256")
    path = out_file(out, old_output) or default_key_path()
    key = generate_key(path, "ed25519" if kind == "ed25519" else "ecdsa-p256")
    typer.echo(f"key {key.public.keyid} in {path} (public: {public_path(path)})")
    typer.echo(f"sign with: export ENVLOCK_SIGNING_KEY={path}   (or --key {path})")
    if (tree := work_tree_of(path)) is not None:
        wiring_of(ctx).say(
            f"warning: {path} is inside the git work tree of {tree}: never commit it; "
            "add it to .gitignore or keep keys in ~/.config/envlock"
        )


@key_app.command("public")
def key_public(ctx: typer.Context, key: KeyOpt = None) -> None:
    """Print the public key (PEM) of the signing key, for whoever verifies."""
    from envlock.errors import UsageError  # noqa: PLC0415

    found = wiring_of(ctx).signing_key(key)
    if found is None:
        raise UsageError("no signing key: pass --key PATH or set ENVLOCK_SIGNING_KEY", hint="envlock key generate")
    typer.echo(found.public.pem.decode(), nl=False)


@app.command("attest")
def attest_command(ctx: typer.Context, run_id: RunIdArg, project: ProjectOpt = Path(), key: KeyOpt = None) -> None:
    """(Re)write a finished run's attestation (runs made before envlock wrote them, or to sign one now)."""
    from envlock.errors import UsageError  # noqa: PLC0415
    from envlock.run.arguments import resolve_run  # noqa: PLC0415
    from envlock.run.records import FINAL, RunStore  # noqa: PLC0415

    wiring = wiring_of(ctx)
    store = RunStore(project)
    record = resolve_run(run_id, store).record
    if record.status not in FINAL:
        raise UsageError(f"run {record.run_id} is still {record.status}: it is attested when it ends")
    wiring.attest_run(store.directory(record.run_id), wiring.signing_key(key))


def _show(checks: Checks) -> None:
    from envlock.report import shown  # noqa: PLC0415

    for line in checks.lines():  # names and values from the evidence: escaped, one line each
        typer.echo(shown(line))


def _trust(wiring: Wiring, keys: list[Path] | None, project_dir: Path | None) -> Trust:
    from envlock.evidence.trust import load_trust  # noqa: PLC0415

    return load_trust(keys or [], environ=wiring.environ, project_dir=project_dir)


@app.command("verify")
def verify_command(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="A run id, a bundle (envlock bundle), or an attestation file.")],
    project: ProjectOpt = Path(),
    key: PublicKeyOpt = None,
    allow_unsigned: AllowUnsignedOpt = False,
) -> None:
    """Check evidence: who signed it (a key you trust), then the record field by field and every hash against what
    is on disk and the image by ID. Exit 0 only for VERIFIED (or, with --allow-unsigned, hashes that hold)."""
    from envlock.evidence.attest import RunPlaces, verify_envelope_file, verify_run_dir  # noqa: PLC0415
    from envlock.evidence.bundle import verify_bundle  # noqa: PLC0415
    from envlock.run.arguments import BundleRef, FileRef, RunRef, resolve  # noqa: PLC0415
    from envlock.run.records import RunStore  # noqa: PLC0415

    wiring = wiring_of(ctx)
    engine: list[Engine | None] = []

    def current() -> Engine | None:
        if not engine:
            engine.append(_engine_or_none(wiring))
        return engine[0]

    def present(image_id: str) -> bool | None:
        found = current()
        return None if found is None or found.image_id(image_id) is None else True

    store = RunStore(project)
    named = resolve(target, (BundleRef, FileRef, RunRef), store)
    if isinstance(
        named, BundleRef
    ):  # from elsewhere: a folder of keys that came with it, or with a project, proves nothing
        checks = verify_bundle(named.path, _trust(wiring, key, None), current)
    elif isinstance(named, FileRef):  # an attestation file
        checks = verify_envelope_file(named.path, _trust(wiring, key, None), present)
    else:
        places = RunPlaces.of_project(project, store.directory(named.run_id))
        checks = verify_run_dir(places, trust=_trust(wiring, key, project), image_present=present)
    _show(checks)
    from envlock.report import shown  # noqa: PLC0415

    typer.echo(shown(checks.require(allow_unsigned=allow_unsigned)))


@trust_app.command("add")
def trust_add(
    ctx: typer.Context,
    public: Annotated[Path, typer.Argument(help="The public key (PEM) to trust, e.g. from `envlock key public`.")],
    name: Annotated[str | None, typer.Option("--name", help="Who it belongs to (default: the file's name).")] = None,
) -> None:
    """Trust a public key to sign evidence (kept in $ENVLOCK_TRUST_DIR, default ~/.config/envlock/trusted-keys)."""
    from envlock.evidence.trust import add_key, user_trust_dir  # noqa: PLC0415

    wiring = wiring_of(ctx)
    added = add_key(public, name, wiring.environ)
    typer.echo(f"trusted {added.name}: key {added.keyid} (in {user_trust_dir(wiring.environ)})")


@trust_app.command("list")
def trust_list(ctx: typer.Context, project: ProjectOpt = Path(), as_json: JsonOpt = False) -> None:
    """The keys trusted here: your trust store, and the project's committed .envlock/trusted-keys/."""
    import json  # noqa: PLC0415

    from envlock.evidence.trust import list_keys  # noqa: PLC0415

    keys = list_keys(wiring_of(ctx).environ, project)
    if as_json:
        typer.echo(json.dumps([{"name": k.name, "keyid": k.keyid, "source": k.source} for k in keys], indent=2))
        return
    if not keys:
        typer.echo("no trusted keys: envlock trust add PUB --name NAME")
    for found in keys:
        typer.echo(f"{found.name:<20} {found.keyid}  ({found.source})")


@trust_app.command("remove")
def trust_remove(
    ctx: typer.Context,
    which: Annotated[str, typer.Argument(help="The key's name, or its id (8 hex digits at least).")],
) -> None:
    """Stop trusting a key of your trust store."""
    from envlock.evidence.trust import remove_key  # noqa: PLC0415

    removed = remove_key(which, wiring_of(ctx).environ)
    typer.echo(f"no longer trusted: {removed.name} (key {removed.keyid})")


@app.command("bundle")
def bundle_command(
    ctx: typer.Context,
    run_id: RunIdArg,
    out: Annotated[Path | None, out_option("The bundle file to write (a tar); required.")] = None,
    old_output: OldOutputOpt = None,
    project: ProjectOpt = Path(),
    with_image: Annotated[bool, typer.Option("--with-image", help="Include the image (docker save).")] = False,
    with_inputs: Annotated[bool, typer.Option("--with-inputs", help="Include the input files themselves.")] = False,
    key: KeyOpt = None,
) -> None:
    """One file with everything to verify and reproduce a run elsewhere: envlock verify|reproduce FILE."""
    from envlock.evidence.bundle import make_bundle  # noqa: PLC0415
    from envlock.run.arguments import resolve_run  # noqa: PLC0415
    from envlock.run.records import RunStore  # noqa: PLC0415

    wiring = wiring_of(ctx)
    output = required_out(out, old_output)
    manifest = make_bundle(
        project,
        resolve_run(run_id, RunStore(project)).run_id,
        output,
        engine=lambda: wiring.engine,
        with_image=with_image,
        with_inputs=with_inputs,
        key=wiring.signing_key(key),
    )
    image = manifest["image"]
    where = (
        "image archive included" if image["archive"] else f"image by digest: {', '.join(image['digests']) or 'none'}"
    )
    typer.echo(f"bundle {output}: run {manifest['run-id']}, {len(manifest['contents'])} files, {where}")


@app.command("report")
def report_command(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="A run id of the project, or a bundle (envlock bundle).")],
    project: ProjectOpt = Path(),
    html: Annotated[bool, typer.Option("--html", help="One self-contained HTML file instead of text.")] = False,
    out: FileOutOpt = None,
    old_output: OldOutputOpt = None,
    key: PublicKeyOpt = None,
    chain: Annotated[
        bool, typer.Option("--chain", help="The whole chain behind RUN (or a file a run wrote), step by step.")
    ] = False,
) -> None:
    """What ran, on what image, lock, code, data and hardware, what it produced, whether reproduced, and whether
    a key you trust signed it: rendered from the signed statement, never from loose files."""
    from envlock.evidence.runreport import render_html, render_text, summarize  # noqa: PLC0415

    wiring = wiring_of(ctx)
    engine = _engine_or_none(wiring)

    def present(image_id: str) -> bool | None:
        return None if engine is None or engine.image_id(image_id) is None else True

    from envlock.evidence.bundle import unpacked  # noqa: PLC0415
    from envlock.evidence.runreport import summarize_bundle  # noqa: PLC0415
    from envlock.run.arguments import BundleRef, FileRef, RunRef, resolve  # noqa: PLC0415
    from envlock.run.records import RunStore  # noqa: PLC0415

    store = RunStore(project)
    if chain:
        from envlock.evidence.lineage import render_chain_html, render_chain_text, summarize_chain  # noqa: PLC0415

        top = resolve(run_id, (FileRef, RunRef), store)
        told = summarize_chain(project, top, trust=_trust(wiring, key, project), image_present=present)
        text = render_chain_html(told) if html else render_chain_text(told)
    elif isinstance(named := resolve(run_id, (BundleRef, RunRef), store), BundleRef):  # the receiver's trust only
        with unpacked(named.path) as found:
            summary = summarize_bundle(found, _trust(wiring, key, None), lambda: engine)
        text = render_html(summary) if html else render_text(summary)
    else:
        summary = summarize(project, named.run_id, trust=_trust(wiring, key, project), image_present=present)
        text = render_html(summary) if html else render_text(summary)
    if (output := print_or_write(text, out, old_output)) is not None:
        wiring.say(f"wrote {output}")
