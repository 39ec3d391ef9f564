"""`envlock export enroot|apptainer`: the lock's image for the HPC runtimes that cannot be installed here."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from envlock.cli.options import OldOutputOpt, PlatformOpt, ProjectOpt, out_option, required_out
from envlock.cli.root import export_app
from envlock.cli.wiring import wiring_of
from envlock.fsutil import shared_scratch


@dataclass(frozen=True)
class _Exported:
    """The lock's image saved from the engine into a scratch folder (removed afterwards)."""

    image_id: str
    reference: str
    archive: Path
    scratch: Path


@contextmanager
def _exported_image(ctx: typer.Context, project: Path, platform: str | None) -> Iterator[_Exported]:
    """The lock's image for a platform (built when missing), saved from the engine into envlock's scratch."""
    from envlock.engine.docker import save_file  # noqa: PLC0415
    from envlock.lock.project import check as check_lock  # noqa: PLC0415
    from envlock.lock.spec import load_spec  # noqa: PLC0415
    from envlock.lock.targets import host_platform  # noqa: PLC0415
    from envlock.run.service import build_lock_image  # noqa: PLC0415

    wiring = wiring_of(ctx)
    spec = load_spec(project)
    locked = check_lock(spec)
    built = build_lock_image(
        locked,
        spec.name,
        platform or host_platform(),
        wiring.builder([spec.index_url, *spec.extra_index_urls]),
        project_dir=spec.project_dir,
        evidence=wiring.evidence(),
    )
    shared_scratch(wiring.cache.scratch)
    with tempfile.TemporaryDirectory(prefix="export-", dir=wiring.cache.scratch) as scratch:
        archive = Path(scratch) / "image.tar"
        save_file(wiring.engine, built.image_id, archive)
        yield _Exported(built.image_id, built.reference, archive, Path(scratch))


@export_app.command("enroot")
def export_enroot(
    ctx: typer.Context,
    out: Annotated[Path | None, out_option("The SquashFS file to write; required.")] = None,
    old_output: OldOutputOpt = None,
    project: ProjectOpt = Path(),
    platform: PlatformOpt = None,
) -> None:
    """The lock's image as a SquashFS for enroot (`enroot create`) and pyxis (`srun --container-image=FILE`)."""
    from envlock.image.portable import enroot_squashfs  # noqa: PLC0415

    output = required_out(out, old_output)
    with _exported_image(ctx, project, platform) as image:
        enroot_squashfs(image.archive, image.image_id, output, image.scratch)
    typer.echo(f"wrote {output} ({image.image_id})")
    wiring_of(ctx).say(f"on the cluster: enroot create -n NAME {output}, or srun --container-image={output.resolve()}")


@export_app.command("apptainer")
def export_apptainer(
    ctx: typer.Context,
    out: Annotated[Path | None, out_option("The OCI archive (.tar) to write; required.")] = None,
    old_output: OldOutputOpt = None,
    project: ProjectOpt = Path(),
    platform: PlatformOpt = None,
) -> None:
    """The lock's image as an OCI archive, and the `apptainer build` command that makes a SIF of it."""
    from envlock.image.portable import oci_archive  # noqa: PLC0415

    output = required_out(out, old_output)
    with _exported_image(ctx, project, platform) as image:
        digest = oci_archive(image.archive, image.image_id, output, image.reference)
    typer.echo(f"wrote {output} ({image.image_id}, manifest {digest})")
    typer.echo(f"apptainer build {output.with_suffix('.sif').name} oci-archive://{output.resolve()}")
