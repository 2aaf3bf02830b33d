"""`specllm tune-draft`: distil the target into a LoRA adapter for the draft (specllm/tune/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import llama
from ..config import DEFAULT_CTX_SIZE, MAX_DRAFT, check_parallel, check_positive, check_sampling, check_seed
from ..console import FetchBars, reported_errors, stderr
from ..errors import UsageError
from ..options import FLAG, IO, CrossVocabOpt, CtxSizeOpt, SeedOpt, ThreadsOpt, VerboseOpt
from ..prompts import load_prompts, select_prompts

TRAINING = "Training"
DATA = "Data"
DEVICES = ("auto", "cpu", "cuda")


def tune_draft(
    target: Annotated[str, typer.Argument(help="Target GGUF: a path or a models.toml name.", metavar="TARGET")],
    draft: Annotated[str, typer.Argument(help="Draft GGUF to tune: a path or a models.toml name.", metavar="DRAFT")],
    prompts: Annotated[Path, typer.Option("--prompts", help="Training prompts: text blocks or JSONL (as bench "
                                          "takes them, .gz too).", metavar="FILE", rich_help_panel=DATA)],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="The LoRA adapter to write (default: "
                                                   "DRAFT-lora.gguf here).", show_default=False, metavar="FILE",
                                                   rich_help_panel=IO)] = None,
    eval_prompts: Annotated[Optional[Path], typer.Option(
        "--eval-prompts", help="Held-out prompts acceptance is measured on (default: the last fifth of --prompts).",
        show_default=False, metavar="FILE", rich_help_panel=DATA)] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="At most N training prompts.", show_default=False,
                                                 metavar="N", rich_help_panel=DATA)] = None,
    data: Annotated[Optional[Path], typer.Option(
        "--data", help="The resumable data file of target outputs (default: OUTPUT.data.jsonl).", show_default=False,
        metavar="FILE", rich_help_panel=DATA)] = None,
    max_tokens: Annotated[int, typer.Option("-n", "--max-tokens", help="Target tokens generated per prompt.",
                                            metavar="N", rich_help_panel=DATA)] = 128,
    temp: Annotated[float, typer.Option("--temp", help="Temperature of the sampled outputs (0: greedy ones only).",
                                        metavar="T", rich_help_panel=DATA)] = 0.8,
    samples: Annotated[int, typer.Option("--samples", help="Sampled outputs per training prompt, besides the "
                                         "greedy one.", metavar="N", rich_help_panel=DATA)] = 1,
    top_logprobs: Annotated[int, typer.Option("--top-logprobs", help="Target log-probabilities kept per position.",
                                              metavar="K", rich_help_panel=DATA)] = 20,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompts in the target's chat template.",
                                       metavar=FLAG, rich_help_panel=DATA)] = False,
    parallel: Annotated[int, typer.Option("--parallel", help="Prompts the target answers at once, in one shared "
                                          "decode per round.", metavar="N", rich_help_panel=DATA)] = 1,
    synthetic: Annotated[int, typer.Option("--synthetic", help="Extra training prompts the target writes itself "
                                           "after the real ones (kept in DATA.synthetic.jsonl).", metavar="N",
                                           rich_help_panel=DATA)] = 0,
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank.", metavar="R", rich_help_panel=TRAINING)] = 16,
    alpha: Annotated[float, typer.Option("--alpha", help="LoRA alpha (the update is scaled by alpha / rank).",
                                         metavar="A", rich_help_panel=TRAINING)] = 32.0,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training samples.", metavar="N",
                                        rich_help_panel=TRAINING)] = 2,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.", metavar="LR",
                                      rich_help_panel=TRAINING)] = 5e-4,
    batch: Annotated[int, typer.Option("--batch", help="Samples per optimiser step.", metavar="N",
                                       rich_help_panel=TRAINING)] = 4,
    ce_weight: Annotated[float, typer.Option("--ce-weight", help="Weight of the cross-entropy on the target's "
                                             "tokens, added to the KL.", metavar="W", rich_help_panel=TRAINING)] = 0.5,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Stop after N optimiser steps.",
                                                     show_default=False, metavar="N", rich_help_panel=TRAINING)] = None,
    device: Annotated[str, typer.Option("--device", help="auto (a GPU when torch sees one), cpu or cuda.",
                                        metavar="DEV", rich_help_panel=TRAINING)] = "auto",
    merge: Annotated[bool, typer.Option("--merge", help="Also write DRAFT merged with the adapter, re-quantized to "
                                        "the draft's own type (OUTPUT-merged.gguf).", metavar=FLAG,
                                        rich_help_panel=IO)] = False,
    k: Annotated[int, typer.Option("-k", "--draft-max", help="Draft length the acceptance is reported for.",
                                   metavar="K", rich_help_panel=IO)] = 4,
    seed: SeedOpt = None,
    cross_vocab: CrossVocabOpt = False,
    ctx_size: CtxSizeOpt = DEFAULT_CTX_SIZE,
    threads: ThreadsOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.", metavar=FLAG,
                                        rich_help_panel=IO)] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Tune a draft for its target: a LoRA adapter trained on the target's own outputs.

    The target answers the prompts (greedy and sampled); the draft, dequantized into PyTorch,
    learns the target's top-k distribution at every position (KL + cross-entropy). The adapter
    is a GGUF file for --draft-lora. A draft of another vocabulary (--cross-vocab) learns the
    target's text in its own tokens (cross-entropy only). Needs the \\[tune] extra (PyTorch).

    [b]Examples[/b]

      specllm tune-draft target.gguf draft.gguf --prompts prompts.jsonl -o draft-lora.gguf
      specllm generate -m target.gguf -md draft.gguf --draft-lora draft-lora.gguf "def add(a, b):"
      specllm tune-draft qwen-1.5b.gguf gemma-270m.gguf --cross-vocab --prompts prompts.jsonl
    """
    with reported_errors(verbose):
        llama.set_verbose(verbose)
        from ..tune import require_torch

        require_torch()
        settings = _settings(**locals())
        from ..tune.run import tune

        report = tune(settings, _Progress())
        if json_:
            typer.echo(json.dumps(report.to_dict()))
        else:
            _print_report(report)


def _settings(*, target, draft, prompts, output, eval_prompts, limit, data, max_tokens, temp, samples, top_logprobs,
              chat, rank, alpha, epochs, lr, batch, ce_weight, max_steps, device, merge, k, seed, cross_vocab,
              ctx_size, threads, parallel, synthetic, **_):
    from ..registry import resolve_model
    from ..tune.data import DataSettings
    from ..tune.run import TuneSettings
    from ..tune.train import TrainSettings

    for name, value in (("--max-tokens", max_tokens), ("--samples", samples), ("--top-logprobs", top_logprobs),
                        ("--rank", rank), ("--epochs", epochs), ("--batch", batch), ("--limit", limit),
                        ("--max-steps", max_steps), ("--threads", threads), ("--synthetic", synthetic)):
        check_positive(name, value, allow_zero=name in ("--samples", "--synthetic"))
    check_parallel("--parallel", parallel)
    check_sampling(temp, 0, 1.0, 0.0)
    check_seed(seed)
    if not 1 <= k <= MAX_DRAFT:
        raise UsageError(f"--draft-max must be between 1 and {MAX_DRAFT}, got {k}")
    if device not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if not (lr > 0 and alpha > 0 and ce_weight >= 0):
        raise UsageError("--lr and --alpha must be > 0, --ce-weight >= 0")
    train_prompts = select_prompts(load_prompts(prompts), None, limit)
    held_out = tuple(load_prompts(eval_prompts)) if eval_prompts else ()
    target_path = Path(resolve_model(target, progress=FetchBars()))
    draft_path = Path(resolve_model(draft, progress=FetchBars()))
    output = output or Path(f"{draft_path.stem}-lora.gguf")
    return TuneSettings(
        target=target_path, draft=draft_path, prompts=tuple(train_prompts), eval_prompts=held_out, output=output,
        data_path=data or output.with_name(output.name + ".data.jsonl"),
        data=DataSettings(target=target_path.name, target_bytes=target_path.stat().st_size, top_k=top_logprobs,
                          max_tokens=max_tokens, temp=temp, samples=samples if temp > 0 else 0, chat=chat,
                          seed=seed or 0),
        train=TrainSettings(rank=rank, alpha=alpha, lr=lr, epochs=epochs, batch=batch, ce_weight=ce_weight,
                            max_steps=max_steps, seed=seed or 0),
        k=k, merge=merge, threads=threads, ctx_size=ctx_size, device=device, parallel=parallel, synthetic=synthetic,
        cross_vocab=cross_vocab,
    )


class _Progress:
    """One bar per phase on stderr; training shows its loss, KL, cross-entropy and tokens/s."""

    def __init__(self):
        self._bar: Optional[Progress] = None
        self._task = None
        self._tokens = 0

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def phase(self, name: str, total: Optional[int] = None, done: int = 0) -> None:
        self._close()
        if total is None:
            stderr.print(f"[dim]{escape(name)}…[/]")
            return
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=stderr)
        self._bar.start()
        self._task = self._bar.add_task(escape(name), total=total, completed=done, info="")

    def sample(self, sample) -> None:
        if self._bar is not None:
            self._tokens += len(sample.output)  # made in this run: tokens/s over the phase's time
            elapsed = next(t.elapsed for t in self._bar.tasks if t.id == self._task) or 0.0
            rate = f", {self._tokens / elapsed:.1f} tok/s" if elapsed else ""
            self._bar.update(self._task, advance=1, info=f"{len(sample.output)} tokens{rate}")

    def step(self, r) -> None:
        if self._bar is None:
            self.phase("training", total=r.total_steps, done=r.step - 1)
        self._bar.update(self._task, completed=r.step, info=f"loss {r.loss:.3f} (KL {r.kl:.3f}, CE {r.ce:.3f}), "
                         f"{r.tokens_per_second:.0f} tok/s")
        if r.step == r.total_steps:
            self._close()


def _print_report(report) -> None:
    stderr.print(f"adapter: {escape(report.adapter or '-')}" + (f"; merged draft: {escape(report.merged)}"
                                                                if report.merged else ""))
    check = report.logits_check
    stderr.print(f"torch vs llama.cpp logits over {check['tokens']} tokens: max |diff| {check['max_abs_diff']:.3g}, "
                 f"mean {check['mean_abs_diff']:.3g} (of a spread of {check['logit_std']:.3g}), "
                 f"argmax agreement {check['argmax_agreement']:.0%}")
    before, after = report.losses_before, report.losses_after
    # A cross-vocabulary draft trains on the cross-entropy of the target's text alone (no KL).
    loss, what = ("ce", "cross-entropy of the target's text") if report.cross_vocab else ("kl", "KL to the target")
    stderr.print(f"{what} (train / held-out): {before['train'][loss]:.3f} / {before['eval'][loss]:.3f} "
                 f"before, {after['train'][loss]:.3f} / {after['eval'][loss]:.3f} after; {report.steps} steps on "
                 f"{report.device}, {report.train_tokens_per_second:.0f} tokens/s")
    how = "replayed through text, as specllm drafts does" if report.cross_vocab else "teacher-forced"
    table = Table(title=f"greedy acceptance on held-out prompts ({how})")
    for column in ("draft", "k", "match", "acceptance", "tokens/round", "per position"):
        table.add_column(column, justify="left" if column in ("draft", "per position") else "right")
    for name, a in report.acceptance.items():
        table.add_row(name, str(a["k"]), "-" if a["match_rate"] is None else f"{a['match_rate']:.1%}", f"{a['acceptance_rate']:.1%}",
                      f"{a['tokens_per_round']:.2f}", " ".join(f"{x:.0%}" for x in a["per_position_acceptance"]))
    stderr.print(table)
    _print_misses_by_confidence(report.acceptance)


def _print_misses_by_confidence(acceptance: dict) -> None:
    """Where each draft misses, by the target's probability for its own token, and whether the
    misses left are near ties of the target (tune/agreement.py, UNSURE_BELOW)."""
    breakdowns = {name: a["misses_by_target_confidence"] for name, a in acceptance.items()
                  if a.get("misses_by_target_confidence")}
    if not breakdowns:
        return
    first = next(iter(breakdowns.values()))
    table = Table(title="held-out misses by the target's probability for its token")
    table.add_column("draft")
    for b in first["bins"]:
        table.add_column(f"{b['from']:.2f}-{b['to']:.2f}", justify="right")
    table.add_row("positions", *(str(b["positions"]) for b in first["bins"]))
    for name, m in breakdowns.items():
        table.add_row(name, *(f"{b['misses']} ({b['misses'] / b['positions']:.0%})" if b["positions"] else "-"
                                         for b in m["bins"]))
    stderr.print(table)
    name, last = list(breakdowns.items())[-1]
    if last["misses"] and last["unsure_misses"] * 2 > last["misses"]:
        stderr.print(f"{last['unsure_misses']} of {name}'s {last['misses']} misses are where the target gave its own token "
                     f"under {last['unsure_below']:.0%}: the target's own close calls, which tuning rarely teaches a draft "
                     f"to make (a draft that already matches the rest is near what tuning can give).")
