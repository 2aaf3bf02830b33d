"""The specllm command line: wiring only. Each command lives in specllm/commands/."""

from __future__ import annotations

import typer

from .commands import generate as generate_cmd

app = typer.Typer(
    name="specllm",
    help="Lossless speculative decoding for GGUF models on llama.cpp.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command(name="generate")(generate_cmd.generate)


def _register_optional_commands() -> None:
    # Commands whose modules are written in parallel; each registers itself when present.
    import importlib

    for module_name, register in (
        ("check", lambda m: app.command(name="check")(m.check)),
        ("models", lambda m: app.add_typer(m.app, name="models")),
        ("bench", lambda m: app.command(name="bench")(m.bench)),
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
    app()
