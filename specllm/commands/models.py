"""`specllm models list | fetch | path`: the registry and the local models from the command line."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.filesize import decimal as format_size
from rich.markup import escape
from rich.table import Table

from .. import registry
from ..console import FetchBars, reported_errors, stderr, warn
from ..registry import listing
from ..errors import UsageError

NAME_WIDTH_CAP = 60  # a longer name folds rather than squeeze every other column out

VerboseOption = Annotated[bool, typer.Option("--verbose", help="Show the traceback of an error.")]

app = typer.Typer(
    help="Models: the registry (models.toml) and the GGUF files already on this machine.",
    no_args_is_help=True,
)


@app.command("list")
def list_models(
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON array, one object per model.")] = False,
    verbose: VerboseOption = False,
) -> None:
    """List the models of models.toml and every GGUF model on this machine (Ollama, the Hugging
    Face and llama.cpp caches, LM Studio, specllm's cache, SPECLLM_MODEL_PATH and the paths of
    models.toml's local section),
    grouped by vocabulary: the models of one group can pair token by token. Files that cannot be
    read are listed on stderr, one line each."""
    with reported_errors(verbose):
        known = registry.load_registry()
        rows, problems = listing.model_rows(known)
    for problem in problems:
        warn(escape(str(problem)))
    if json_:
        typer.echo(json.dumps(rows, indent=2))
        return
    out = Console()
    for group in listing.group_by_vocabulary(rows):
        out.print(_group_table(group))
    pairs = Table(title="pairs", title_justify="left")
    for column in ("name", "target", "draft", "settings"):
        pairs.add_column(column, overflow="fold")
    for name, pair in known.pairs.items():
        pairs.add_row(escape(name), escape(pair.target), escape(pair.draft), escape(_settings_text(pair)))
    out.print(pairs)
    if len(known.files) > 1:
        out.print(f"user entries from {escape(str(known.files[-1]))}")


def _group_table(group: listing.VocabGroup) -> Table:
    known = group.vocab_id is not None
    if not known:
        title = "not fetched yet: `specllm models fetch NAME`"
    else:
        size = f", {group.vocab_size:,} tokens" if group.vocab_size else ""
        pairing = " - these models can pair" if len(group.rows) > 1 else ""
        title = f"vocabulary {group.vocab_id} ({group.vocab_type or '?'}{size}){pairing}"
    table = Table(title=escape(title), title_justify="left")
    # Names are what -m takes: keep them whole (the other columns give way first).
    longest = max(len(row["name"]) for row in group.rows)
    table.add_column("name", min_width=min(longest, NAME_WIDTH_CAP), overflow="fold")
    columns = ("source", "parameters", "quant", "size", "architecture") if known else ("source", "size")
    for column in columns:
        table.add_column(column, justify="right" if column in ("parameters", "size") else "left", overflow="fold")
    for row in group.rows:
        size = format_size(row["size_bytes"]) if row.get("size_bytes") else "?"
        if known:
            cells = (row["source"], _parameters_text(row.get("parameters")), escape(row.get("quantization") or "?"),
                     size, escape(row.get("architecture") or "?"))  # fmt: skip
        else:
            cells = (row["source"], size)
        table.add_row(escape(row["name"]), *cells)
    return table


def _parameters_text(count: Optional[int]) -> str:
    """1.54B, 494M, 2.1K: as model cards write them."""
    if not count:
        return "?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return str(count)


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
    name: Annotated[str, typer.Argument(help="A model name, as -m takes it (or a GGUF path, printed back).")],
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
