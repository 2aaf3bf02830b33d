"""Distillation: the LoRA'd draft learns the target's distribution on the target's own outputs.

Loss per output position (Hong et al. 2025: offline white-box distillation):
    KL(p || q) over the target's top-k ids, p renormalised on them (the file keeps only top-k),
  + ce_weight * cross-entropy of the target's token under the draft q.
The KL teaches the draft the target's whole preference; the cross-entropy its first choice,
which is what greedy acceptance counts. A draft of another vocabulary trains on the
cross-entropy alone, of the target's text in its own tokens (crossvocab.TextSample).

The loop checkpoints the adapter, the optimiser and the step, so that an interrupted run resumes
where it stopped (the sample order is a function of the seed and the epoch).
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import TuneError
from .crossvocab import TextSample
from .data import Sample
from .forward import DraftModel

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainSettings:
    rank: int = 16
    alpha: float = 32.0  # scale alpha / rank = 2, peft's usual pairing of r = 16 and alpha = 32
    lr: float = 5e-4  # LoRA on a small model moves little per step: larger than full fine-tuning's 1e-5
    epochs: int = 2
    batch: int = 4  # samples per optimiser step (their gradients are summed)
    ce_weight: float = 0.5
    max_steps: Optional[int] = None
    seed: int = 0


@dataclass
class StepReport:
    step: int
    total_steps: int
    loss: float
    kl: float
    ce: float
    tokens: int  # output tokens this step trained on
    tokens_per_second: float  # of the step, forward and backward


def sample_losses(model: DraftModel, sample: Sample | TextSample) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL to the target's top-k, cross-entropy of the target's tokens), each a mean over the
    sample's output positions. A TextSample has no KL (zero): see crossvocab.py."""
    device = model.device
    if isinstance(sample, TextSample):
        tokens = torch.tensor(sample.tokens, device=device)
        n = sample.n_context
        logits = model.logits(tokens[:-1], slice(n - 1, None))  # row i predicts tokens[i + 1]
        return torch.zeros((), device=device), F.cross_entropy(logits, tokens[n:])
    n_out, n_prompt = len(sample.output), len(sample.prompt)
    tokens = torch.tensor(sample.prompt + sample.output[:-1], device=device)
    # Row n_prompt - 1 (the last prompt token) predicts output[0].
    log_q = F.log_softmax(model.logits(tokens, slice(n_prompt - 1, n_prompt - 1 + n_out)), dim=-1)
    top_ids = torch.tensor(sample.top_ids, device=device)
    log_p = F.log_softmax(torch.tensor(sample.top_logprobs, device=device, dtype=log_q.dtype), dim=-1)
    kl = (log_p.exp() * (log_p - log_q.gather(1, top_ids))).sum(-1).mean()
    ce = -log_q.gather(1, torch.tensor(sample.output, device=device)[:, None]).mean()
    return kl, ce


def mean_losses(model: DraftModel, samples: Sequence[Sample]) -> dict[str, float]:
    """Token-weighted mean KL and cross-entropy over samples, without gradients."""
    total_kl = total_ce = n = 0.0
    with torch.no_grad():
        for sample in samples:
            if not sample.output:
                continue
            kl, ce = sample_losses(model, sample)
            total_kl += kl.item() * len(sample.output)
            total_ce += ce.item() * len(sample.output)
            n += len(sample.output)
    return {"kl": total_kl / n if n else 0.0, "ce": total_ce / n if n else 0.0, "tokens": int(n)}


def schedule(n_samples: int, s: TrainSettings) -> list[list[int]]:
    """The batches of sample indices, every epoch shuffled by (seed, epoch): the same list on a rerun."""
    batches = []
    for epoch in range(s.epochs):
        order = list(range(n_samples))
        random.Random(s.seed * 1000 + epoch).shuffle(order)
        batches += [order[i:i + s.batch] for i in range(0, n_samples, s.batch)]
    return batches[: s.max_steps] if s.max_steps is not None else batches


class Checkpoint:
    """The adapter, the optimiser and the step, in one torch file beside the output."""

    def __init__(self, path: Path, identity: dict):
        self.path = path
        self.identity = identity  # what must be equal to resume: settings, draft, data

    def load(self, model: DraftModel, optimizer: torch.optim.Optimizer) -> int:
        """The step to resume from (0: no checkpoint of this run)."""
        if not self.path.exists():
            return 0
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a file cut off mid-write, or not a checkpoint
            raise TuneError(f"cannot read the checkpoint {self.path}: {e}", hint="delete it to start over") from None
        if state.get("identity") != self.identity:
            raise TuneError(f"the checkpoint {self.path} belongs to another run (other settings, draft or data)",
                            hint="delete it to start over, or choose another -o")
        model.load_lora_state(state["lora"])
        optimizer.load_state_dict(state["optimizer"])
        return int(state["step"])

    def save(self, model: DraftModel, optimizer: torch.optim.Optimizer, step: int) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({"version": CHECKPOINT_VERSION, "identity": self.identity, "step": step,
                    "lora": model.lora_state(), "optimizer": optimizer.state_dict()}, tmp)
        tmp.replace(self.path)


def checkpoint_identity(s: TrainSettings, draft_name: str, samples: Sequence[Sample]) -> dict:
    """What a checkpoint must share with a run to be resumed by it. Not the length of the run: the
    schedule of more epochs starts with that of fewer, so a rerun with more --epochs trains on."""
    settings = {k: v for k, v in asdict(s).items() if k not in ("epochs", "max_steps")}
    return {"version": CHECKPOINT_VERSION, "settings": settings, "draft": draft_name,
            "samples": [list(sample.key) for sample in samples]}


CHECKPOINT_EVERY_SECONDS = 60.0  # an interruption loses at most a minute of training


def sample_loss(kl: torch.Tensor, ce: torch.Tensor, sample: Sample | TextSample, s: TrainSettings) -> torch.Tensor:
    """What a sample's step minimises: KL + ce_weight * CE; a TextSample's CE alone (no KL)."""
    return ce if isinstance(sample, TextSample) else kl + s.ce_weight * ce


def _step(model: DraftModel, optimizer: torch.optim.Optimizer, batch: Sequence[Sample], s: TrainSettings) -> StepReport:
    """One optimiser step on a batch: the token-weighted mean loss of its samples."""
    began = time.perf_counter()
    optimizer.zero_grad()
    n_tokens = sum(len(sample.output) for sample in batch)
    kl_sum = ce_sum = loss_sum = 0.0
    for sample in batch:
        kl, ce = sample_losses(model, sample)
        weight = len(sample.output) / n_tokens
        loss = sample_loss(kl, ce, sample, s) * weight
        loss.backward()
        kl_sum += kl.item() * weight
        ce_sum += ce.item() * weight
        loss_sum += loss.item()
    optimizer.step()
    seconds = time.perf_counter() - began
    return StepReport(0, 0, loss_sum, kl_sum, ce_sum, n_tokens,
                      n_tokens / seconds if seconds > 0 else 0.0)


def train(model: DraftModel, samples: Sequence[Sample], s: TrainSettings, checkpoint: Optional[Checkpoint] = None,
          on_step: Callable[[StepReport], None] = lambda r: None) -> int:
    """Train the LoRA in place; returns the number of steps taken in this call."""
    samples = [sample for sample in samples if sample.output]
    if not samples:
        raise TuneError("no training sample has any output token", hint="raise --max-tokens or check the prompts")
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0)
    batches = schedule(len(samples), s)
    start = checkpoint.load(model, optimizer) if checkpoint else 0
    completed, last_save = start, time.monotonic()
    try:
        for step in range(start, len(batches)):
            report = _step(model, optimizer, [samples[i] for i in batches[step]], s)
            completed = step + 1
            report.step, report.total_steps = completed, len(batches)
            on_step(report)
            if checkpoint and (time.monotonic() - last_save > CHECKPOINT_EVERY_SECONDS or completed == len(batches)):
                checkpoint.save(model, optimizer, completed)
                last_save = time.monotonic()
    except KeyboardInterrupt:
        if checkpoint and completed > start:  # keep the steps done: a rerun resumes after them
            checkpoint.save(model, optimizer, completed)
        raise
    return len(batches) - start
