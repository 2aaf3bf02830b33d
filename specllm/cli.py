"""The specllm command line: wiring only. Each command lives in specllm/commands/."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from typer.exceptions import TyperException

from . import __version__
from .commands import generate as generate_cmd
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
app.command(name="generate")(generate_cmd.generate)


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


def _register_optional_commands() -> None:
    # Commands whose modules are written in parallel; each registers itself when present.
    import importlib

    for module_name, register in (
        ("check", lambda m: app.command(name="check")(m.check)),
        ("models", lambda m: app.add_typer(m.app, name="models")),
        ("bench", lambda m: app.command(name="bench")(m.bench)),
        ("rpc_server", lambda m: app.command(name="rpc-server")(m.rpc_server)),
        ("serve", lambda m: app.command(name="serve")(m.serve)),
    ):
        try:
            module = importlib.import_module(f"specllm.commands.{module_name}")
        except ModuleNotFoundError as e:
            if e.name != f"specllm.commands.{module_name}":
                raise
            continue
        register(module)


_register_optional_commands()


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
