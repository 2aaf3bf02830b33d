"""`specllm drafts TARGET`: which local model (or the lookup drafter) pays as TARGET's draft here."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import llama, registry
from ..config import check_positive
from ..console import FetchBars, reported_errors, stderr
from ..drafting.selection import (
    CROSS_VOCAB, LOOKUP, SAME_VOCAB, DraftRow, Prompt, Selection, SelectionSettings, local_candidates, select_drafts,
    with_adapters,
)
from ..options import FLAG, ThreadsOpt, VerboseOpt
from ..prompts import DRAFTS_PROMPTS, load_prompts
from ..saved_pairs import pair_adapters, pair_reference, remove_saved_pair, save_pair

DEFAULT_MAX_TOKENS = 128  # per prompt: enough rounds for every k to settle, short enough to stay quick


def drafts(
    target: Annotated[str, typer.Argument(
        help="Target model: a models.toml name, ollama:MODEL[:TAG], hf:ORG/REPO[:QUANT], lmstudio:PUB/MODEL, "
        "a local model's name or a GGUF path.", show_default=False, metavar="TARGET")],
    prompts: Annotated[Optional[Path], typer.Option(
        "--prompts", help="Measure on these prompts: JSONL ({\"prompt\": ...} or Spec-Bench \"turns\") or plain "
        "text blocks separated by blank lines (default: a built-in mixed set of 5).", show_default=False,
        metavar="FILE")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap every prompt in the target's chat template.",
                                       metavar=FLAG)] = False,
    max_tokens: Annotated[int, typer.Option("-n", "--max-tokens", help="Tokens the target generates per prompt.",
                                            metavar="N")] = DEFAULT_MAX_TOKENS,
    draft_lora: Annotated[Optional[Path], typer.Option(
        "--draft-lora", help="A GGUF LoRA adapter (specllm tune-draft): every local draft of its architecture is "
        "measured with it too, in a row of its own. A pair in models.toml with a draft_lora for TARGET adds its "
        "draft with that adapter.", show_default=False, metavar="FILE")] = None,
    threads: ThreadsOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.",
                                        metavar=FLAG)] = False,
    save: Annotated[bool, typer.Option("--save", help="Write the recommended pair to your models.toml: "
                                       "`generate -m TARGET` then uses that draft.", metavar=FLAG)] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Rank every local model that could draft for TARGET, and the lookup drafter, on this machine.

    The target's greedy answers to the prompts are generated once; each draft is measured
    against them (one teacher-forced pass for a draft of the same vocabulary, a replay through
    text for another vocabulary), and the target's and the draft's decode times on this machine
    price every draft length k. Progress goes to stderr, the table (or --json) to stdout.

    [b]Examples[/b]

      specllm drafts qwen2.5-coder-1.5b-instruct-q4_k_m
      specllm drafts ollama:qwen2.5-coder:7b --prompts my-prompts.jsonl --save
      specllm drafts qwen2.5-coder-1.5b-instruct-q4_k_m --draft-lora draft-lora.gguf
    """
    with reported_errors(verbose):
        llama.set_verbose(verbose)
        check_positive("--max-tokens", max_tokens)
        check_positive("--threads", threads)
        prompt_set = _prompts(prompts, chat)
        target_path = registry.resolve_model(target, progress=FetchBars())
        scan = registry.scan_local_models()
        candidates, target_facts = local_candidates(target_path, scan.models)
        adapters = ([(None, draft_lora)] if draft_lora else []) + pair_adapters(target_path)
        candidates = with_adapters(candidates, adapters)
        settings = SelectionSettings(max_tokens=max_tokens, chat=chat, threads=threads)
        start = time.perf_counter()

        def progress(message: str) -> None:  # the elapsed time says where a slow run spends it
            stderr.print(f"{time.perf_counter() - start:6.1f} s  {escape(message)}", style="dim")

        selection = select_drafts(target_path, candidates, prompt_set, settings, progress=progress,
                                  target_facts=target_facts)
        progress("done")
        if json_:
            typer.echo(json.dumps(selection_json(target, selection), indent=2))
        else:
            render(target, selection)
        if save:
            _save(target, selection)


def _prompts(file: Optional[Path], chat: bool) -> list[Prompt]:
    if file is None:
        return [Prompt(text, chat=chat or chatty) for text, chatty in DRAFTS_PROMPTS]
    return [Prompt(p.text, chat=chat) for p in load_prompts(file)]


def recommendation(target: str, selection: Selection) -> tuple[str, str]:
    """(what to run, why)."""
    row = selection.recommended
    t = shlex.quote(target)
    if row is None:
        return f"specllm generate -m {t} --mode none", "no draft is predicted to beat plain decoding here"
    best = row.best
    why = (f"{row.name}{f' + {row.lora.name}' if row.lora else ''}: {best.tokens_per_round:.2f} tokens per round "
           f"at k={best.k}, {best.speedup:.2f}x plain")
    if row.relation == LOOKUP:
        return f"specllm generate -m {t}", why + "; auto mode drafts from these lookups when they pay"
    cross = " --cross-vocab" if row.relation == CROSS_VOCAB else ""
    lora = f" --draft-lora {shlex.quote(str(row.lora))}" if row.lora else ""
    return f"specllm generate -m {t} -md {shlex.quote(row.name)}{lora} --mode draft -k {best.k}{cross}", why


def _save(target: str, selection: Selection) -> None:
    row = selection.recommended
    if row is None or row.relation == LOOKUP:
        removed = remove_saved_pair(target)
        what = "plain decoding" if row is None else "the lookup drafter"
        stderr.print(f"nothing to save: {what} needs no draft model"
                     + (f"; removed the pair saved earlier in {escape(str(removed))}" if removed else ""))
        return
    draft_ref = pair_reference(row.name, row.path)
    target_ref = pair_reference(target, selection.target)
    file, name = save_pair(target_ref, draft_ref, mode="draft", k=row.best.k, cross_vocab=row.relation == CROSS_VOCAB,
                           draft_lora=row.lora)
    stderr.print(f"saved pair {escape(name)} in {escape(str(file))}: `specllm generate -m {escape(target)}` "
                 "now drafts with it (-md overrides)")


# -- output ------------------------------------------------------------------------------------


def _ratio(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3g}"


def _shape(row: DraftRow) -> str:
    """layers/hidden size/heads, e.g. 24/896/14."""
    f = row.facts
    if f is None:
        return "-"
    return "/".join(str(v) if v else "?" for v in (f.layers, f.hidden_size, f.heads))


def _draft_cell(row: DraftRow) -> str:
    """The name, the adapter it was measured with, and the architecture under it."""
    arch = row.facts.architecture if row.facts and row.facts.architecture else ""
    lora = f"\n+ lora {escape(row.lora.name)}" if row.lora else ""
    return escape(row.name) + lora + (f"\n[dim]{escape(arch)}[/]" if arch else "")


SHORT_RELATION = {SAME_VOCAB: "same vocab", CROSS_VOCAB: "cross-vocab"}  # narrow columns on a terminal


def render(target: str, selection: Selection) -> None:
    out = Console()
    table = Table(title=f"drafts for {escape(target)} ({selection.n_prompts} prompts, "
                  f"{selection.generated_tokens} tokens of the target's greedy output)", title_justify="left",
                  caption="size: parameters / the target's; shape: layers/hidden size/heads; acceptance: "
                  "by draft position at the best k", caption_justify="left")
    table.add_column("draft", overflow="fold", ratio=3)
    table.add_column("relation", ratio=1)
    for column in ("size", "shape", "vocab"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("acceptance", ratio=2)
    for column in ("tok/round", "k", "speedup"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in selection.rows:
        best = row.best
        vocab = str(row.facts.vocab_size) if row.facts and row.facts.vocab_size else "-"
        facts = (_draft_cell(row), SHORT_RELATION.get(row.relation, row.relation),
                 "-" if row.relation == LOOKUP else _ratio(row.size_ratio), _shape(row), vocab)
        if best is None:
            table.add_row(*facts, f"[dim]skipped: {escape(row.skipped or 'nothing measured')}[/]", "-", "-", "-")
            continue
        acceptance = " ".join(f"{a:.0%}" for a in best.acceptance_by_position) or "-"
        table.add_row(*facts, acceptance, f"{best.tokens_per_round:.2f}", str(best.k), f"{best.speedup:.2f}x")
    out.print(table)
    command, why = recommendation(target, selection)
    out.print(f"recommended: [b]{escape(command)}[/]", soft_wrap=True)
    out.print(f"  {escape(why)}", style="dim", soft_wrap=True)


def selection_json(target: str, selection: Selection) -> dict:
    command, why = recommendation(target, selection)
    recommended = selection.recommended
    return {
        "target": {"reference": target, "path": str(selection.target),
                   **(selection.target_facts.as_dict() if selection.target_facts else {})},
        "prompts": selection.n_prompts,
        "generated_tokens": selection.generated_tokens,
        "target_ms": {str(n): ms for n, ms in selection.target_ms.items()},
        "rows": [_row_json(row) for row in selection.rows],
        "recommended": {"draft": recommended.name if recommended else None,
                        "draft_lora": str(recommended.lora) if recommended and recommended.lora else None,
                        "command": command, "reason": why},
    }


def _row_json(row: DraftRow) -> dict:
    best = row.best
    facts = row.facts
    return {
        "draft": row.name,
        "draft_lora": str(row.lora) if row.lora else None,
        "relation": row.relation,
        "path": str(row.path) if row.path else None,
        "size_ratio": row.size_ratio if row.relation != LOOKUP else None,
        "architecture": facts.architecture if facts else None,
        "layers": facts.layers if facts else None,
        "hidden_size": facts.hidden_size if facts else None,
        "heads": facts.heads if facts else None,
        "vocab_size": facts.vocab_size if facts else None,
        "skipped": row.skipped,
        "draft_ms_per_token": row.draft_ms_per_token,
        "predicted_tokens_per_round": best.tokens_per_round if best else None,
        "best_k": best.k if best else None,
        "predicted_speedup": best.speedup if best else None,
        "acceptance_by_position": list(best.acceptance_by_position) if best else [],
        "per_k": [{"k": p.k, "predicted_tokens_per_round": p.tokens_per_round, "predicted_speedup": p.speedup}
                  for p in row.per_k],
    }

