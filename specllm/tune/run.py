"""`specllm tune-draft` from end to end: data, guard, training, export, measurement.

The command (specllm/commands/tune_draft.py) builds a TuneSettings and renders what `tune`
reports through the `TuneProgress` callbacks; everything else happens here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .. import llama
from ..config import EngineConfig
from ..drafting.compat import ensure_compatible
from ..engine import Engine
from ..errors import IncompatibleModelsError, TuneError
from ..prompts import BenchPrompt
from . import require_torch
from .agreement import measure
from .data import DataSettings, Sample, generate_data, plan, read_samples
from .synthetic import default_path as default_synthetic_path, synthetic_prompts
from .train import StepReport, TrainSettings

DEFAULT_EVAL_SHARE = 0.2  # without --eval-prompts, the last fifth of the prompts is held out
# The training set's losses before and after training are measured on an even sample of this
# many training samples: that tells memorising from learning as well as the whole set does, and
# the whole set's two passes took 9 of the 70 minutes of a 200-prompt run on the 2-core CPU.
TRAIN_LOSS_SAMPLES = 40


@dataclass(frozen=True)
class TuneSettings:
    target: Path
    draft: Path
    prompts: tuple[BenchPrompt, ...]
    eval_prompts: tuple[BenchPrompt, ...]
    output: Path
    data_path: Path
    data: DataSettings
    train: TrainSettings
    k: int = 4  # the draft length acceptance is reported for
    merge: bool = False
    threads: Optional[int] = None
    ctx_size: int = 4096
    device: str = "auto"
    parallel: int = 1  # data: prompts generated at once, one shared decode per round
    synthetic: int = 0  # data: extra training prompts the target writes (tune/synthetic.py)
    cross_vocab: bool = False  # a draft of another vocabulary trains on the target's text (crossvocab.py)

    @property
    def checkpoint_path(self) -> Path:
        return self.output.with_name(self.output.name + ".ckpt")

    @property
    def merged_path(self) -> Path:
        return self.output.with_name(self.output.stem + "-merged.gguf")


class TuneProgress:
    """What the command shows while tuning runs (the base class shows nothing)."""

    def phase(self, name: str, total: Optional[int] = None, done: int = 0) -> None: ...

    def sample(self, sample: Sample) -> None: ...

    def step(self, report: StepReport) -> None: ...


@dataclass
class TuneReport:
    adapter: Optional[str] = None
    merged: Optional[str] = None
    device: str = "cpu"
    samples: dict = field(default_factory=dict)
    logits_check: dict = field(default_factory=dict)
    losses_before: dict = field(default_factory=dict)
    losses_after: dict = field(default_factory=dict)
    steps: int = 0
    train_tokens_per_second: float = 0.0
    acceptance: dict = field(default_factory=dict)  # "draft", "draft+lora", "merged" -> Agreement.to_dict()
    cross_vocab: bool = False  # trained on text (cross-entropy only), measured by the cross-vocabulary replay

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def split_prompts(prompts: Sequence[BenchPrompt], eval_prompts: Sequence[BenchPrompt]) -> tuple[list, list]:
    """(training, held-out) prompts: the held-out ones given, or the last fifth of `prompts`."""
    if eval_prompts:
        return list(prompts), list(eval_prompts)
    if len(prompts) < 2:
        raise TuneError("tune-draft needs at least 2 prompts (some are held out to measure acceptance)",
                        hint="add prompts, or give held-out ones with --eval-prompts")
    n_eval = max(1, round(len(prompts) * DEFAULT_EVAL_SHARE))
    return list(prompts[:-n_eval]), list(prompts[-n_eval:])


def check_pair(target: Path, draft: Path, cross_vocab: bool = False) -> bool:
    """Whether the pair shares token ids (distillation per token). A pair that does not is
    tuned through text with --cross-vocab, and refused without it."""
    with llama.Model(target, vocab_only=True) as t, llama.Model(draft, vocab_only=True) as d:
        try:
            ensure_compatible(t, d)
        except IncompatibleModelsError as refusal:
            if cross_vocab:
                return False
            refusal.hint = ("tune-draft distils per token: add --cross-vocab to train the draft on the target's "
                            "text instead, or pick a draft with the target's tokenizer")
            raise
    return True


def make_data(s: TuneSettings, train_prompts: list, eval_prompts: list, progress: TuneProgress) -> list[Sample]:
    texts = [p.text for p in train_prompts + eval_prompts]
    config = EngineConfig(target=str(s.target), mode="none", ctx_size=s.ctx_size, threads=s.threads,
                          parallel=s.parallel)
    with Engine(config) as engine:
        synthetic = []
        if s.synthetic:
            progress.phase(f"{s.synthetic} synthetic prompts written by the target")
            synthetic = synthetic_prompts(engine, default_synthetic_path(s.data_path),
                                          [p.text for p in train_prompts], s.synthetic, s.data.seed)
        jobs = plan(texts, len(train_prompts), s.data, synthetic)
        done = len({x.key for x in read_samples(s.data_path, s.data)} & {(j.prompt_index, j.variant) for j in jobs})
        progress.phase("target outputs", total=len(jobs), done=done)
        samples = generate_data(engine, s.data_path, s.data, jobs, on_sample=progress.sample)
    wanted = {(j.prompt_index, j.variant) for j in jobs}
    return [x for x in samples if x.key in wanted]


def pick_device(torch, device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TuneError("--device cuda: torch sees no GPU", hint="use --device cpu (or auto)")
    return device


def tune(s: TuneSettings, progress: TuneProgress = TuneProgress()) -> TuneReport:
    torch = require_torch()  # before the minutes of data generation, say at once what is missing
    from .export import write_adapter
    from .forward import DraftModel
    from .train import Checkpoint, checkpoint_identity, mean_losses, train
    from .correctness import check_forward
    from .weights import GgufWeights

    per_token = check_pair(s.target, s.draft, s.cross_vocab)
    weights = GgufWeights(s.draft)  # an architecture tune-draft cannot train fails here, before the data
    train_prompts, eval_prompts = split_prompts(s.prompts, s.eval_prompts)
    samples = make_data(s, train_prompts, eval_prompts, progress)
    train_set = [x for x in samples if x.split == "train" and x.output]
    eval_set = [x for x in samples if x.split == "eval" and x.output]
    if not train_set:
        raise TuneError("the target wrote nothing for any training prompt", hint="check the prompts and --max-tokens")
    report = TuneReport(samples={"train": len(train_set), "eval": len(eval_set),
                                 "train_tokens": sum(len(x.output) for x in train_set),
                                 "eval_tokens": sum(len(x.output) for x in eval_set)}, cross_vocab=not per_token)
    target_eval = eval_set  # acceptance is measured on the target's own tokens
    if not per_token:
        from .crossvocab import text_samples

        train_set, eval_set = text_samples(train_set, s.target, s.draft), text_samples(eval_set, s.target, s.draft)
        report.samples.update(train_draft_tokens=sum(len(x.output) for x in train_set),
                              eval_draft_tokens=sum(len(x.output) for x in eval_set))
    if s.threads:
        torch.set_num_threads(s.threads)
    report.device = pick_device(torch, s.device)
    progress.phase("loading the draft into PyTorch")
    torch.manual_seed(s.train.seed)  # the adapter's initial A: the same run, the same adapter
    model = DraftModel(weights, rank=s.train.rank, alpha=s.train.alpha, device=report.device)
    first = train_set[0]
    report.logits_check = check_forward(model, s.draft, first.prompt + first.output if per_token else first.tokens,
                                        threads=s.threads).to_dict()
    progress.phase("losses before training")
    train_sample = loss_sample(train_set)
    report.losses_before = {"train": mean_losses(model, train_sample), "eval": mean_losses(model, eval_set)}

    checkpoint = Checkpoint(s.checkpoint_path, checkpoint_identity(s.train, s.draft.name, train_set))
    steps_tokens = []

    def on_step(r: StepReport) -> None:
        steps_tokens.append((r.tokens, r.tokens / r.tokens_per_second if r.tokens_per_second else 0.0))
        progress.step(r)

    progress.phase("training")
    report.steps = train(model, train_set, s.train, checkpoint, on_step)
    seconds = sum(t for _, t in steps_tokens)
    report.train_tokens_per_second = sum(n for n, _ in steps_tokens) / seconds if seconds else 0.0
    progress.phase("losses after training")
    report.losses_after = {"train": mean_losses(model, train_sample), "eval": mean_losses(model, eval_set)}

    lora = {name: (layer.lora_a.detach().cpu().numpy(), layer.lora_b.detach().cpu().numpy())
            for name, layer in model.lora_layers().items()}
    write_adapter(s.output, weights.arch, s.train.alpha, lora, name=f"{s.draft.stem} tuned for {s.target.stem}")
    report.adapter = str(s.output)
    del model

    progress.phase("acceptance on held-out prompts")
    report.acceptance = measure_acceptance(s, target_eval, lora, per_token)
    report.merged = str(s.merged_path) if s.merge else None
    return report


def loss_sample(train_set: list) -> list:
    """At most TRAIN_LOSS_SAMPLES training samples, evenly spread over the set."""
    step = -(-len(train_set) // TRAIN_LOSS_SAMPLES)
    return train_set[::max(step, 1)]


def measure_acceptance(s: TuneSettings, eval_set: list[Sample], lora: dict, per_token: bool = True) -> dict[str, dict]:
    """Greedy acceptance at k of the draft, the draft + adapter and (--merge) the merged,
    re-quantized draft, on the held-out outputs: teacher-forced for a draft of the target's
    vocabulary, the replay of `specllm drafts` through text for one of another."""
    if per_token:
        def accept(draft: Path, lora_path: Optional[Path] = None) -> dict:
            return measure(draft, eval_set, k=s.k, lora=lora_path, threads=s.threads).to_dict()
    else:
        from .crossvocab import measure_cross_vocab

        def accept(draft: Path, lora_path: Optional[Path] = None) -> dict:
            return measure_cross_vocab(draft, s.target, eval_set, k=s.k, lora=lora_path, threads=s.threads).to_dict()

    results = {"draft": accept(s.draft), "draft+lora": accept(s.draft, s.output)}
    if s.merge:
        from .export import merged_updates, write_merged

        write_merged(s.draft, merged_updates(s.train.alpha, lora), s.merged_path, n_threads=s.threads)
        results["merged"] = accept(s.merged_path)
    return results
