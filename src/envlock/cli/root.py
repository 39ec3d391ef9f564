"""The typer applications: `envlock` and its command groups (commands register themselves in their modules)."""

from __future__ import annotations

from typing import Annotated

import typer

from envlock import __version__

app = typer.Typer(
    name="envlock",
    help="Lock, build, run and reproduce ML training environments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts name TOML tables like [tool.envlock]: plain text, not markup
)
export_app = typer.Typer(help="Write the lock in another tool's format.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(export_app, name="export")
runs_app = typer.Typer(help="The run records of this project.", rich_markup_mode=None)
app.add_typer(runs_app, name="runs")
base_app = typer.Typer(
    help="Base images: envlock's reproducible recipes under base-images/.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(base_app, name="base")
key_app = typer.Typer(
    help="Signing keys for attestations (Ed25519 or ECDSA P-256).", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(key_app, name="key")
trust_app = typer.Typer(
    help="The public keys you trust to sign evidence (verify, report, reproduce BUNDLE).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(trust_app, name="trust")


class CommandExited(SystemExit):
    """The exit status of the user's command: passed through as it is, never read as envlock's own."""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"envlock {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Lock, build, run and reproduce ML training environments."""
