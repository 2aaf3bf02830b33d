"""`specllm check TARGET DRAFT`: can the draft propose tokens the target verifies?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.filesize import decimal as format_size
from rich.markup import escape
from rich.table import Table

from .. import llama
from ..drafting.compat import Compatibility, VocabSummary, check_vocabularies, draft_size_warning
from ..console import FetchBars, reported_errors, warn
from ..options import VerboseOpt
from ..registry import resolve_model

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]


def check(
    target: Annotated[str, typer.Argument(help="Target model: a registry or local model name (as -m) or a GGUF path.")],
    draft: Annotated[str, typer.Argument(help="Draft model: a registry or local model name (as -m) or a GGUF path.")],
    json_: JsonOption = False,
    verbose: VerboseOpt = False,
) -> None:
    """Compare the vocabularies of TARGET and DRAFT; exit 0 when the draft can draft for the target."""
    with reported_errors(verbose):
        llama.set_verbose(verbose)
        paths = {role: resolve_model(name, progress=FetchBars()) for role, name in (("target", target), ("draft", draft))}
        summaries = {role: _read_vocab(path) for role, path in paths.items()}
    result = check_vocabularies(summaries["target"], summaries["draft"])
    warnings = list(result.warnings)
    size_warning = draft_size_warning(paths["target"].stat().st_size, paths["draft"].stat().st_size)
    if result.compatible and size_warning:
        warnings.append(size_warning)
    if json_:
        typer.echo(json.dumps(_as_dict(paths, summaries, result, warnings), indent=2))
    else:
        _render(paths, summaries, result)
        for line in warnings:
            warn(escape(line))
    if not result.compatible:
        raise typer.Exit(1)


def _read_vocab(path: Path) -> VocabSummary:
    with llama.Model(path, vocab_only=True) as model:
        return VocabSummary.from_model(model)


def _render(paths: dict[str, Path], summaries: dict[str, VocabSummary], result: Compatibility) -> None:
    t, d = summaries["target"], summaries["draft"]
    table = Table()
    table.add_column("")
    table.add_column("target", overflow="fold")
    table.add_column("draft", overflow="fold")
    rows = [
        ("file", paths["target"].name, paths["draft"].name),
        ("file size", format_size(paths["target"].stat().st_size), format_size(paths["draft"].stat().st_size)),
        ("vocab type", t.type_name, d.type_name),
        ("tokens", str(t.n_tokens), str(d.n_tokens)),
        ("BOS", t.token_label(t.bos), d.token_label(d.bos)),
        ("EOS", t.token_label(t.eos), d.token_label(d.eos)),
        ("EOT", t.token_label(t.eot), d.token_label(d.eot)),
        ("adds BOS", "yes" if t.add_bos else "no", "yes" if d.add_bos else "no"),
        ("ids only in this one", str(len(result.target_only_ids)), str(len(result.draft_only_ids))),
        ("texts unlike target's", "", f"{len(result.differing_ids)} of {result.n_shared} shared ids"),
    ]
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    out = Console()
    out.print(table)
    if result.compatible:
        out.print(f"[green]compatible[/] for token-level verification: {escape(result.reason)}", soft_wrap=True)
    else:
        out.print(f"[red]incompatible[/]: {escape(result.reason)}", soft_wrap=True)


def _as_dict(paths: dict[str, Path], summaries: dict[str, VocabSummary], result: Compatibility, warnings: list[str]) -> dict:
    data = result.as_dict()
    data["warnings"] = warnings
    for role in ("target", "draft"):
        data[role] = {"path": str(paths[role]), "file_size": paths[role].stat().st_size, **summaries[role].as_dict()}
    return data
