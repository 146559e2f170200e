"""`slimdeploy recipes list | show | validate`."""

from __future__ import annotations

import typer

from slimdeploy.cli.common import not_yet

app = typer.Typer(help="List, show and validate compression recipes.", no_args_is_help=True)


@app.command("list")
def list_cmd() -> None:
    """The built-in recipes."""
    not_yet("recipes list", "issue 5 (recipes and compress)")
