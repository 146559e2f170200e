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


def _is_click_error(exc: Exception) -> bool:
    """click's ClickException, or typer's vendored copy of it (typer >= 0.2x ships its own click)."""
    return any(c.__name__ == "ClickException" for c in type(exc).__mro__) and hasattr(exc, "format_message")


GLOBAL_FLAGS = ("--json", "--quiet", "--debug")


def hoist_global_flags(argv: list[str]) -> list[str]:
    """`slimdeploy eval --json` means the same as `slimdeploy --json eval`: global flags may follow the
    sub-command (none of our options takes them as a value), but click only reads them before it."""
    flags = [a for a in argv if a in GLOBAL_FLAGS]
    return [*dict.fromkeys(flags), *(a for a in argv if a not in GLOBAL_FLAGS)]


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC, raised as OSError by Python or wrapped in a message by safetensors / torch."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text


def _interrupted() -> None:
    print(
        "\ninterrupted: nothing half-written was kept (outputs appear only when complete); run the same "
        "command again to start over (compress continues after its last finished stage)",
        file=sys.stderr,
    )
    sys.exit(130)


def main() -> None:
    """Console entry point: user errors become one line on stderr and a non-zero exit."""
    if "--" not in sys.argv:
        sys.argv[1:] = hoist_global_flags(sys.argv[1:])
    try:
        rc = app(standalone_mode=False)
        if rc == 130:  # typer turns Ctrl-C into an exit code of 130, silently
            _interrupted()
        sys.exit(rc if isinstance(rc, int) else 0)
    except SlimdeployError as exc:
        if FLAGS.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        if exc.exit_code == 130:  # typer turns Ctrl-C into Exit(130), silently
            _interrupted()
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _interrupted()
    except Exception as exc:  # click usage errors and anything unexpected: still one line
        if _is_click_error(exc):  # usage errors: one line too, with where to look
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            print(f"error: {' '.join(exc.format_message().split())}{hint}", file=sys.stderr)
            sys.exit(exc.exit_code)
        if FLAGS.debug:
            raise
        if _disk_full(exc):
            print(
                "error: no space left on device while writing; free space or choose an --out on another disk "
                "(nothing half-written was kept in the output; compress keeps its finished stages to resume)",
                file=sys.stderr,
            )
            sys.exit(1)
        from slimdeploy.utils.device import missing_kernel

        if (why := missing_kernel(exc)) is not None:  # fp16/bf16 op without a kernel here: the input's dtype
            print(f"error: {why}", file=sys.stderr)
            sys.exit(1)
        # not an input we refuse on purpose: a defect. Say so, and how to get what a bug report needs.
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        print(
            f"error: slimdeploy failed unexpectedly ({type(exc).__name__}: {first}); this is a bug, please "
            "report it with the output of the same command run with --debug",
            file=sys.stderr,
        )
        sys.exit(1)
