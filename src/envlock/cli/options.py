"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

ProjectOpt = Annotated[
    Path,
    typer.Option("--project", "-C", help="Project directory holding pyproject.toml.", show_default=False),
]
# Under `envlock runs`, whose own -C applies when the subcommand has none (envlock runs -C DIR show ID).
RunsProjectOpt = Annotated[
    Path | None,
    typer.Option("--project", "-C", help="Project directory holding pyproject.toml.", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
PlatformOpt = Annotated[
    str | None,
    typer.Option(
        "--platform",
        help="Only this platform, e.g. linux/arm64 (`all`: every platform of the lock).",
        show_default=False,
    ),
]
MlflowOpt = Annotated[
    str | None,
    typer.Option(
        "--mlflow",
        help="Track the run in MLflow at this URI (default: $MLFLOW_TRACKING_URI when set).",
        show_default=False,
    ),
]
NoMlflowOpt = Annotated[bool, typer.Option("--no-mlflow", help="Do not track, even with MLFLOW_TRACKING_URI set.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed: PYTHONHASHSEED and ENVLOCK_SEED.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Run although the host fails the preflight.")]
GpusOpt = Annotated[
    bool | None, typer.Option("--gpus/--no-gpus", help="Default: GPUs when the host has them and the lock is CUDA.")
]
OutputsOpt = Annotated[
    list[str] | None, typer.Option("--output", "-o", help="A file or directory the run produces (repeatable).")
]
InputsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input", "-i", help="A file or directory the run reads (repeatable): hashed first, mounted read-only."
    ),
]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param", "-p", help="A hyperparameter KEY=VALUE (repeatable): recorded key by key, over params files'."
    ),
]
EnvOpt = Annotated[
    list[str] | None, typer.Option("--env", "-e", help="Pass this host variable in (repeatable); recorded by name.")
]
ArchiveOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--archive", help="An image archive to restore from (repeatable); .envlock/archives/ is searched too."
    ),
]
RunIdArg = Annotated[str, typer.Argument(help="A run id, or a unique prefix of one.")]


def out_option(help_text: str) -> Any:
    """`-o/--out FILE`: the file a command writes (never a run's declared output: that is `run --output`)."""
    return typer.Option("--out", "-o", help=help_text, show_default=False)


def command_name(ctx: typer.Context) -> str:
    """`envlock export k8s`: the command as the user typed it (the root's own name is the program's, not ours)."""
    return "envlock" + ctx.command_path.removeprefix(ctx.find_root().command_path)


def _deprecated_output(ctx: typer.Context, value: Path | None) -> Path | None:
    if value is not None:
        from envlock.cli.wiring import wiring_of  # noqa: PLC0415  (options stay importable without the root)

        wiring_of(ctx).say(f"warning: --output is deprecated on `{command_name(ctx)}`; use -o/--out")
    return value


FileOutOpt = Annotated[Path | None, out_option("File to write (default: print to stdout).")]
# The old spelling of -o/--out on the commands that write a file, kept for one release (issue 24): one warning line.
OldOutputOpt = Annotated[
    Path | None, typer.Option("--output", hidden=True, callback=_deprecated_output, show_default=False)
]


def out_file(out: Path | None, old: Path | None) -> Path | None:
    """The file to write, from -o/--out or the deprecated --output (not both)."""
    if out is not None and old is not None:
        from envlock.errors import UsageError  # noqa: PLC0415

        raise UsageError("-o/--out and --output (its old spelling) were both given: give one", hint="use -o/--out FILE")
    return out if out is not None else old


def required_out(out: Path | None, old: Path | None) -> Path:
    """The file to write where the command has no default: -o/--out (or the deprecated --output) is required."""
    chosen = out_file(out, old)
    if chosen is None:
        from envlock.errors import UsageError  # noqa: PLC0415

        raise UsageError("missing option -o/--out FILE", hint="name the file to write: -o FILE")
    return chosen


def print_or_write(text: str, out: Path | None, old: Path | None) -> Path | None:
    """`text` on stdout, or written atomically to the file -o/--out (or --output) names: that file, if one."""
    output = out_file(out, old)
    if output is None:
        typer.echo(text, nl=False)
    else:
        from envlock.fsutil import atomic_write_text  # noqa: PLC0415

        atomic_write_text(output, text)
    return output


RuntimeOpt = Annotated[
    str | None,
    typer.Option(
        "--runtime",
        help="What runs the image: docker, podman or charliecloud (default: [tool.envlock] runtime, else docker).",
    ),
]
KeyOpt = Annotated[
    Path | None,
    typer.Option("--key", help="Signing key (PEM); default: $ENVLOCK_SIGNING_KEY; none: unsigned.", show_default=False),
]
PublicKeyOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--key",
        help="A public key (PEM) you trust to have signed it (repeatable); added to your trust store's "
        "(envlock trust list).",
        show_default=False,
    ),
]
AllowUnsignedOpt = Annotated[
    bool,
    typer.Option(
        "--allow-unsigned",
        help="Accept unsigned evidence or evidence signed by an untrusted key: HASHES HOLD, ORIGIN NOT VERIFIED.",
    ),
]
