"""`envlock export enroot|apptainer`: the lock's image for the HPC runtimes that cannot be installed here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from envlock.cli.options import PlatformOpt, ProjectOpt
from envlock.cli.root import export_app
from envlock.cli.wiring import wiring_of


def _exported_image(ctx: typer.Context, project: Path, platform: str | None, scratch: Path) -> tuple[str, str, Path]:
    """The lock's image for a platform (built when missing), saved from the engine: (image ID, reference, archive)."""
    from envlock.lock.project import check as check_lock  # noqa: PLC0415
    from envlock.lock.spec import load_spec  # noqa: PLC0415
    from envlock.lock.targets import host_platform  # noqa: PLC0415
    from envlock.run.pinned import build_lock  # noqa: PLC0415

    wiring = wiring_of(ctx)
    spec = load_spec(project)
    locked = check_lock(spec)
    built = build_lock(
        locked, spec.name, platform or host_platform(), wiring.builder([spec.index_url, *spec.extra_index_urls])
    )
    archive = scratch / "image.tar"
    wiring.engine.save(built.image_id, archive)
    return built.image_id, built.reference, archive


@export_app.command("enroot")
def export_enroot(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option("--output", "-o", help="The SquashFS file to write.")],
    project: ProjectOpt = Path(),
    platform: PlatformOpt = None,
) -> None:
    """The lock's image as a SquashFS for enroot (`enroot create`) and pyxis (`srun --container-image=FILE`)."""
    import tempfile  # noqa: PLC0415

    from envlock.image.portable import enroot_squashfs  # noqa: PLC0415

    scratch_root = wiring_of(ctx).cache.scratch
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="export-", dir=scratch_root) as scratch:
        image_id, _, archive = _exported_image(ctx, project, platform, Path(scratch))
        enroot_squashfs(archive, image_id, output, Path(scratch))
    typer.echo(f"wrote {output} ({image_id})")
    wiring_of(ctx).say(f"on the cluster: enroot create -n NAME {output}, or srun --container-image={output.resolve()}")


@export_app.command("apptainer")
def export_apptainer(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option("--output", "-o", help="The OCI archive (.tar) to write.")],
    project: ProjectOpt = Path(),
    platform: PlatformOpt = None,
) -> None:
    """The lock's image as an OCI archive, and the `apptainer build` command that makes a SIF of it."""
    import tempfile  # noqa: PLC0415

    from envlock.image.portable import oci_archive  # noqa: PLC0415

    scratch_root = wiring_of(ctx).cache.scratch
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="export-", dir=scratch_root) as scratch:
        image_id, reference, archive = _exported_image(ctx, project, platform, Path(scratch))
        digest = oci_archive(archive, image_id, output, reference)
    typer.echo(f"wrote {output} ({image_id}, manifest {digest})")
    typer.echo(f"apptainer build {output.with_suffix('.sif').name} oci-archive://{output.resolve()}")
