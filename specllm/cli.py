"""The specllm command line: wiring only. Each command lives in specllm/commands/."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from typer.exceptions import TyperException

from . import __version__
from .commands import bench, check, drafts, generate, models, rpc_server, serve, tune_draft
from .console import EXIT_INTERRUPTED, print_error

app = typer.Typer(
    name="specllm",
    help="Lossless speculative decoding for GGUF models on llama.cpp.\n\n"
    "Start with [b]specllm generate --help[/b]; every command has --help.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Every command, explicitly: a missing module is an ImportError here, never a silently absent command.
app.command(name="generate")(generate.generate)
app.command(name="check")(check.check)
app.command(name="drafts")(drafts.drafts)
app.add_typer(models.app, name="models")
app.command(name="bench")(bench.bench)
app.command(name="rpc-server")(rpc_server.rpc_server)
app.command(name="serve")(serve.serve)
app.command(name="tune-draft")(tune_draft.tune_draft)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"specllm {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.", callback=_show_version,
                                          is_eager=True, metavar="")] = False,
) -> None:
    pass


def main() -> None:
    """The `specllm` script: typer parses; its usage errors print like specllm's own (`error: ...`)."""
    try:
        code = app(standalone_mode=False)
    except TyperException as e:  # click's usage errors: bad option values, unknown options or commands
        code = getattr(e, "exit_code", 2)
        if type(e).__name__ != "NoArgsIsHelpError":  # `specllm` alone: the help is already printed
            _print_usage_error(e)
    except typer.Abort:
        code = EXIT_INTERRUPTED  # typer's Abort comes from Ctrl-C or an end of input at a prompt
    sys.exit(code if isinstance(code, int) else 0)


def _print_usage_error(e: TyperException) -> None:
    message = e.format_message() if hasattr(e, "format_message") else str(e)
    ctx = getattr(e, "ctx", None)
    print_error(message, f"see '{ctx.command_path} --help'" if ctx is not None else None)
