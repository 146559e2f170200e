"""The `slimdeploy` command: a thin typer layer; every heavy import happens inside a command."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from slimdeploy import __version__
from slimdeploy.cli import bench_cmd, commands, recipes_cmd, zoo_cmd
from slimdeploy.cli.common import FLAGS
from slimdeploy.errors import SlimdeployError

# our own rich progress bars replace transformers' tqdm ones (which would break one-line errors on stderr)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
if "--debug" not in sys.argv:  # library warnings would turn one-line errors into pages
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")

app = typer.Typer(
    name="slimdeploy",
    help="Prune, recover, merge, export and benchmark Hugging Face causal LMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"slimdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes.")] = False,
    json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    FLAGS.quiet, FLAGS.json, FLAGS.debug = quiet, json, debug


commands.register(app)
app.add_typer(recipes_cmd.app, name="recipes")
app.add_typer(bench_cmd.app, name="bench")
app.add_typer(zoo_cmd.app, name="zoo")


def main() -> None:
    """Console entry point: user errors become one line on stderr and a non-zero exit."""
    try:
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except SlimdeployError as exc:
        if FLAGS.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # click usage errors and anything unexpected: still one line
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if FLAGS.debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"error: {type(exc).__name__}: {first} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)
