"""`specllm models list | fetch | path`: the model registry from the command line."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.filesize import decimal as format_size
from rich.markup import escape
from rich.table import Table

from .. import paths, registry
from ..console import FetchBars, reported_errors, stderr
from ..errors import UsageError

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
VerboseOption = Annotated[bool, typer.Option("--verbose", help="Show the traceback of an error.")]

app = typer.Typer(
    help="The model registry (models.toml): list, fetch and locate named models.",
    no_args_is_help=True,
)


@app.command("list")
def list_models(json_: JsonOption = False, verbose: VerboseOption = False) -> None:
    """List the named models (family, size, cached or not) and the named pairs."""
    with reported_errors(verbose):
        known = registry.load_registry()
        present = {name: registry.present_path(entry) for name, entry in known.models.items()}
    if json_:
        typer.echo(json.dumps(_registry_as_dict(known, present), indent=2))
        return
    out = Console()
    table = Table(title="models", title_justify="left")
    for column in ("name", "family", "size", "cached"):
        table.add_column(column, justify="right" if column == "size" else "left", overflow="fold")
    for name, entry in known.models.items():
        size = format_size(entry.size) if entry.size else "?"
        table.add_row(escape(name), escape(entry.family), size, "yes" if present[name] else "no")
    out.print(table)
    pairs = Table(title="pairs", title_justify="left")
    for column in ("name", "target", "draft", "settings"):
        pairs.add_column(column, overflow="fold")
    for name, pair in known.pairs.items():
        pairs.add_row(escape(name), escape(pair.target), escape(pair.draft), escape(_settings_text(pair)))
    out.print(pairs)
    if len(known.files) > 1:
        out.print(f"user entries from {escape(str(known.files[-1]))}")


@app.command("fetch")
def fetch(
    name: Annotated[Optional[str], typer.Argument(help="A model name (default: both models of the default pair).")] = None,
    pair: Annotated[Optional[str], typer.Option("--pair", help="Fetch both models of this pair.")] = None,
    verbose: VerboseOption = False,
) -> None:
    """Download models into the cache and verify them; models already cached cost nothing."""
    with reported_errors(verbose):
        if name and pair:
            raise UsageError("give a model name or --pair, not both")
        known = registry.load_registry()
        if name:
            names = [name]
        else:
            chosen = known.pair(pair or registry.DEFAULT_PAIR)
            names = [chosen.target, chosen.draft]
        for model_name in names:
            path = registry.fetch_model(known.model(model_name), progress=FetchBars())
            stderr.print(escape(f"{model_name}: {path}"), soft_wrap=True)


@app.command("path")
def path(
    name: Annotated[str, typer.Argument(help="A model name (or a GGUF path, printed back).")],
    verbose: VerboseOption = False,
) -> None:
    """Print the file of a model, fetching it first if needed (for scripts)."""
    with reported_errors(verbose):
        typer.echo(str(registry.resolve_model(name, progress=FetchBars())))


def _settings_text(pair: registry.Pair) -> str:
    settings = {
        "mode": pair.mode,
        "k": pair.k,
        "ngram": f"{pair.ngram_min}-{pair.ngram_max}" if pair.ngram_min and pair.ngram_max else None,
        "cross-vocab": "yes" if pair.cross_vocab else None,
    }
    return " ".join(f"{key}={value}" for key, value in settings.items() if value is not None)


def _registry_as_dict(known: registry.Registry, present: dict) -> dict:
    return {
        "models": [
            {**entry.as_dict(), "cached": present[name] is not None,
             "file_path": str(present[name]) if present[name] else None}
            for name, entry in known.models.items()
        ],
        "pairs": [vars(pair) for pair in known.pairs.values()],
        "registry_files": [str(f) for f in known.files],
        "cache_dir": str(paths.models_dir()),
    }  # fmt: skip
