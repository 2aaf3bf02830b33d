"""`specllm bench`'s core: which drafter and which k pay on this machine, for these prompts?

One run loads the target once and every draft once, then runs each configuration of the sweep
on every prompt:

- plain decoding (`none`): the baseline, always run; speedups are relative to it,
- n-gram lookup (`ngram`) and each draft model (`draft`) at each k of the sweep,
- `auto` (generate's default mode) with each draft, drafting at most the largest k.

A draft whose vocabulary the target cannot verify is refused, shown as a row with the reason
(with `cross_vocab` it drafts through text instead, as generate --cross-vocab does).

The configurations of one prompt run one after the other, so that a slow spell of a shared
machine touches them alike (and the prompt is prefilled once). Every run generates at most
`max_tokens`; with `ignore_eos` every run generates exactly that many.

The cost model. Measured after a warm-up, with the prompts' depth of cache: the target's time
T(n) for one decode of n = 1..K+1 tokens and the draft's time t_d for one token. A round
drafting k tokens emits E(k) = 1 + sum_j prod_{i<=j} alpha_i tokens (auto.expected_tokens),
where alpha_i is the chance that draft i is accepted once the ones before it were, and costs
k t_d + T(k+1); plain decoding emits 1 token per T(1). Hence

    predicted speedup = T(1) (1 + f (E(k) - 1)) / ((1 - f) T(1) + f (k t_d + T(k+1)))

with f the share of rounds that drafted at all (about 1 for a draft model, the match rate for
n-gram lookup). alpha_i comes from the run's per-position acceptance, which is
prod_{j<=i} alpha_j (stats.py). The best k by the model maximises E(k) / (k t_d + T(k+1))
(auto.best_draft_length) on the acceptance pooled over all of a draft's runs. The model prices
decodes only: the loop's own per-round work (verification, bookkeeping) is left out, which
matters for tiny models and little for real ones.
"""

from __future__ import annotations

import csv
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from . import llama
from .auto import AutoPolicy, CostModel, Learned, time_batches, best_draft_length, expected_tokens
from .drafters import Drafter, NgramDrafter, NoDrafter
from .compat import Compatibility, ensure_compatible
from .engine import DEFAULT_CTX_SIZE, DEFAULT_NGRAM_SIZES, make_model_drafter
from .errors import IncompatibleModelsError, SpecllmError, UsageError
from .llama import common_prefix_length
from .sampling import SamplingParams
from .speculative import DraftPolicy, FixedPolicy, Generation
from .prompts import BUILTIN_PROMPTS, BenchPrompt
from .stats import SpecStats

MODES = ("none", "ngram", "draft", "auto")
DEFAULT_KS = (2, 3, 4, 5, 6, 7, 8)
ALL_CATEGORIES = "all"  # the row that adds up every category, when there are several
WARMUP_TOKENS = 8
TIMING_REPEATS = 3  # auto's timing takes the best of 2 decodes; a busy machine needs more tries

ROW_FIELDS = (
    "mode", "draft", "k", "category", "context_length", "prompts", "prompt_tokens", "tokens",
    "acceptance_rate", "mean_accepted_length", "per_position_acceptance", "tokens_per_second", "speedup",
    "predicted_speedup", "target_ms", "draft_ms", "best", "refused",
)

# -- the sweep ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    mode: str
    k: int = 0
    draft: Optional[str] = None  # the draft model's name, for `draft` and `auto`

    @property
    def label(self) -> str:
        name = f"{self.mode} {short_name(self.draft)}" if self.draft else self.mode
        return f"{name} k={self.k}" if self.k and self.mode != "auto" else name


def short_name(name: Optional[str]) -> str:
    return re.sub(r"\.gguf$", "", name or "", flags=re.IGNORECASE)


def sweep(modes: Sequence[str], ks: Sequence[int], drafts: Sequence[str]) -> list[BenchConfig]:
    """The configurations to measure, baseline first. Auto mode gets each draft (or none)."""
    configs = [BenchConfig("none")]
    if "ngram" in modes:
        configs += [BenchConfig("ngram", k) for k in ks]
    if "draft" in modes:
        configs += [BenchConfig("draft", k, d) for d in drafts for k in ks]
    if "auto" in modes:
        configs += [BenchConfig("auto", max(ks), d) for d in (drafts or [None])]
    return configs


# -- the cost model -----------------------------------------------------------------------------


def conditional_acceptance(per_position: Sequence[float]) -> list[float]:
    """alpha_i, the chance that draft i is accepted given that the ones before it were, from
    per-position acceptance (the share of i-th drafts accepted, i.e. prod_{j<=i} alpha_j)."""
    alphas, survived = [], 1.0
    for p in per_position:
        alphas.append(min(p / survived, 1.0) if survived > 0 else 0.0)
        survived = p
    return alphas


def predicted_speedup(per_position: Sequence[float], k: int, costs: CostModel, draft_share: float = 1.0) -> float:
    """Expected tokens per round over cost per round, relative to plain decoding's 1 / T(1)."""
    t1 = costs.target_time(1)
    if t1 <= 0 or k <= 0:
        return 1.0
    e = expected_tokens(conditional_acceptance(per_position[:k]))[-1]
    tokens = 1 + draft_share * (e - 1)
    cost = (1 - draft_share) * t1 + draft_share * (k * costs.draft_time(1) + costs.target_time(k + 1))
    return t1 * tokens / cost


def best_k_by_model(per_position: Sequence[float], costs: CostModel, max_k: int) -> tuple[int, float]:
    """(k, predicted speedup) of the best draft length 0..max_k (0: speculation does not pay)."""
    t1 = costs.target_time(1)
    alphas = conditional_acceptance(per_position[:max_k])
    k, rate = best_draft_length(alphas, lambda k: k * costs.draft_time(1) + costs.target_time(k + 1))
    return k, rate * t1


@dataclass
class MeasuredCosts:
    """What one decode costs at one context depth: target by batch size, each draft per token."""

    prompt_tokens: int
    target: dict[int, float] = field(default_factory=dict)  # seconds by batch size
    draft: dict[str, float] = field(default_factory=dict)  # seconds per token by draft name

    def model_for(self, draft: Optional[str]) -> CostModel:
        """auto's CostModel for the target with this draft (no draft: drafting costs nothing)."""
        per_token = self.draft.get(draft) if draft else None
        return CostModel(target=dict(self.target), draft={1: per_token} if per_token else {})

    def to_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "target_ms": {str(n): s * 1e3 for n, s in sorted(self.target.items())},
            "draft_ms_per_token": {name: s * 1e3 for name, s in self.draft.items()},
        }


# -- adding up runs -----------------------------------------------------------------------------


def add_stats(total: SpecStats, stats: SpecStats) -> None:
    """Add one run's counts and times into a running total."""
    total.prompt_tokens += stats.prompt_tokens
    total.generated += stats.generated
    total.rounds += stats.rounds
    total.drafted += stats.drafted
    total.accepted += stats.accepted
    for i, (d, a) in enumerate(zip(stats.drafted_at, stats.accepted_at)):
        if i == len(total.drafted_at):
            total.drafted_at.append(0)
            total.accepted_at.append(0)
        total.drafted_at[i] += d
        total.accepted_at[i] += a
    for source, n in stats.rounds_by_source.items():
        total.rounds_by_source[source] = total.rounds_by_source.get(source, 0) + n
    total.prompt_seconds += stats.prompt_seconds
    total.decode_seconds += stats.decode_seconds
    total.target_seconds += stats.target_seconds
    total.draft_seconds += stats.draft_seconds


def draft_share(stats: SpecStats) -> float:
    """The share of rounds that drafted at least one token."""
    return stats.drafted_at[0] / stats.rounds if stats.rounds and stats.drafted_at else 0.0


GroupKey = tuple[str, Optional[int]]  # (category, context length)


@dataclass
class Totals:
    """Runs added up per configuration and group."""

    stats: dict[tuple[BenchConfig, GroupKey], SpecStats] = field(default_factory=dict)
    prompts: dict[tuple[BenchConfig, GroupKey], int] = field(default_factory=dict)

    def add(self, config: BenchConfig, group: GroupKey, stats: SpecStats) -> None:
        key = (config, group)
        if key not in self.stats:
            self.stats[key] = SpecStats(mode=config.mode, k=config.k)
            self.prompts[key] = 0
        add_stats(self.stats[key], stats)
        self.prompts[key] += 1


def make_rows(
    configs: Sequence[BenchConfig],
    groups: Sequence[GroupKey],
    totals: Totals,
    costs: dict[Optional[int], MeasuredCosts],
) -> list[dict]:
    """One row per group and configuration; speedups against the group's baseline."""
    rows = []
    for group in groups:
        category, length = group
        baseline = totals.stats.get((configs[0], group))
        base_rate = baseline.tokens_per_second if baseline else 0.0
        group_rows = []
        for config in configs:
            stats = totals.stats.get((config, group))
            if stats is None:
                continue
            rate = stats.tokens_per_second
            if config.mode in ("ngram", "draft"):
                predicted = predicted_speedup(stats.per_position_acceptance, config.k,
                                              costs[length].model_for(config.draft), draft_share(stats))
            else:
                # Plain decoding is the unit; auto chooses its draft per round, beyond this model.
                predicted = 1.0 if config.mode == "none" else None
            group_rows.append({
                "mode": config.mode,
                "draft": config.draft,
                "k": config.k,
                "category": category,
                "context_length": length,
                "prompts": totals.prompts[(config, group)],
                "prompt_tokens": stats.prompt_tokens / max(totals.prompts[(config, group)], 1),
                "tokens": stats.generated,
                "acceptance_rate": stats.acceptance_rate,
                "mean_accepted_length": stats.mean_accepted_length,
                "per_position_acceptance": stats.per_position_acceptance,
                "tokens_per_second": rate,
                "speedup": rate / base_rate if base_rate > 0 else None,
                "predicted_speedup": predicted,
                "target_ms": stats.target_seconds * 1e3,
                "draft_ms": stats.draft_seconds * 1e3,
                "best": False,
                "refused": None,
            })
        if group_rows:
            max(group_rows, key=lambda r: r["tokens_per_second"])["best"] = True
        rows += group_rows
    return rows


def model_best_ks(
    configs: Sequence[BenchConfig],
    groups: Sequence[GroupKey],
    totals: Totals,
    costs: dict[Optional[int], MeasuredCosts],
) -> list[dict]:
    """Per draft model and group: the k the cost model finds best, on acceptance pooled over k."""
    out = []
    drafts = list(dict.fromkeys(c.draft for c in configs if c.mode == "draft"))
    for group in groups:
        for draft in drafts:
            pooled = SpecStats()
            swept = [c for c in configs if c.mode == "draft" and c.draft == draft]
            for config in swept:
                if (config, group) in totals.stats:
                    add_stats(pooled, totals.stats[(config, group)])
            if not pooled.rounds:
                continue
            max_k = max(c.k for c in swept)
            k, speedup = best_k_by_model(pooled.per_position_acceptance, costs[group[1]].model_for(draft), max_k)
            out.append({"draft": draft, "category": group[0], "context_length": group[1], "k": k,
                        "predicted_speedup": speedup})
    return out


def refused_row(draft: str, reason: str) -> dict:
    row = dict.fromkeys(ROW_FIELDS)
    row.update(mode="draft", draft=draft, refused=reason, best=False)
    return row


# -- preparing prompts --------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedPrompt:
    tokens: list[int]
    category: str
    context_length: Optional[int]  # the length it was padded to; None without --context-lengths


def tokenize_prompt(model: llama.Model, text: str, chat: bool) -> list[int]:
    if chat:
        text = model.apply_chat_template(text)
    tokens = model.vocab.tokenize(text, add_special=True, parse_special=True)
    if not tokens:
        raise UsageError("a prompt has no tokens")
    return tokens


def pad_to_length(model: llama.Model, text: str, length: int, filler: str, chat: bool) -> Optional[list[int]]:
    """The prompt with filler text in front, about `length` tokens; None when it is longer already.

    The filler goes before the prompt (inside the chat message with `chat`), so that the
    question the model answers stays the same and only the context in front of it grows.
    """
    tokens = tokenize_prompt(model, text, chat)
    if len(tokens) > length:
        return None
    separator = "\n\n"
    missing = length - len(tokens) - len(model.vocab.tokenize(separator, add_special=False))
    if missing <= 0:
        return tokens
    filler_ids = model.vocab.tokenize(filler, add_special=False, parse_special=False)
    if not filler_ids:
        return tokens
    filler_ids = filler_ids * (1 + missing // len(filler_ids))
    padding = model.vocab.detokenize(filler_ids[:missing]).decode("utf-8", errors="ignore")
    return tokenize_prompt(model, padding + separator + text, chat)


def filler_for(prompt: BenchPrompt, prompts: Sequence[BenchPrompt]) -> str:
    """Natural text of the same kind as the prompts (the set's others, then the built-in ones),
    rather than noise, which would make acceptance at long contexts unrepresentative."""
    texts = [p.text for p in (*prompts, *BUILTIN_PROMPTS) if p.text != prompt.text]
    return "\n\n".join(dict.fromkeys(texts))


# -- running ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchSettings:
    target: str  # resolved paths
    drafts: tuple[str, ...] = ()
    ks: tuple[int, ...] = DEFAULT_KS
    modes: tuple[str, ...] = MODES
    max_tokens: int = 128
    params: SamplingParams = SamplingParams()
    seed: Optional[int] = None
    ignore_eos: bool = False
    chat: bool = False
    context_lengths: tuple[int, ...] = ()
    ctx_size: int = DEFAULT_CTX_SIZE
    threads: Optional[int] = None
    n_gpu_layers: int = 0
    ngram_sizes: tuple[int, ...] = DEFAULT_NGRAM_SIZES
    warmup_tokens: int = WARMUP_TOKENS
    cross_vocab: bool = False  # run a draft of another vocabulary through text instead of refusing it
    rpc: tuple[str, ...] = ()  # llama.cpp RPC workers holding the target's layers (the drafts stay local)


@dataclass
class LoadedDraft:
    name: str
    model: llama.Model
    context: llama.Context
    compatibility: Optional[Compatibility]  # None: another vocabulary, drafts go through text

    @property
    def through_text(self) -> bool:
        return self.compatibility is None


@dataclass
class BenchResult:
    settings: BenchSettings
    target: str
    rows: list[dict]
    best_k: list[dict]
    costs: dict[Optional[int], MeasuredCosts]
    refused: dict[str, str]
    warnings: list[str]

    def to_dict(self) -> dict:
        s = self.settings
        return {
            "target": self.target,
            "settings": {
                "drafts": [Path(d).name for d in s.drafts], "ks": list(s.ks), "modes": list(s.modes),
                "max_tokens": s.max_tokens, "temperature": s.params.temperature, "seed": s.seed,
                "ignore_eos": s.ignore_eos, "chat": s.chat, "context_lengths": list(s.context_lengths),
                "ctx_size": s.ctx_size, "threads": s.threads, "n_gpu_layers": s.n_gpu_layers,
            },
            "costs": [{"context_length": length, **c.to_dict()} for length, c in self.costs.items()],
            "best_k": self.best_k,
            "warnings": self.warnings,
            "rows": self.rows,
        }


def write_csv(rows: Sequence[dict], path: Path) -> None:
    try:
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=ROW_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                cells = {k: ("" if v is None else v) for k, v in row.items()}
                if row.get("per_position_acceptance") is not None:
                    cells["per_position_acceptance"] = " ".join(f"{p:.4f}" for p in row["per_position_acceptance"])
                writer.writerow(cells)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from None


# (what is being done, runs done, runs in all)
ProgressCallback = Callable[[str, int, int], None]


class Bench:
    """One target and its drafts, loaded once; `run` measures every configuration on every prompt."""

    def __init__(self, settings: BenchSettings):
        if not settings.ks or min(settings.ks) < 1:
            raise UsageError("the k sweep needs draft lengths >= 1")
        self.settings = settings
        self.warnings: list[str] = []
        self.refused: dict[str, str] = {}
        self.drafts: list[LoadedDraft] = []
        self.target_model = llama.Model(settings.target, n_gpu_layers=settings.n_gpu_layers, rpc=settings.rpc)
        self.target: Optional[llama.Context] = None
        try:
            speculative = set(settings.modes) - {"none"}
            if speculative and not self.target_model.has_partial_kv_removal:
                raise IncompatibleModelsError(
                    f"{self.target_model.name} is a recurrent/hybrid model: its cache cannot be rolled back "
                    "after rejected drafts", hint="use --modes none")
            self.target = llama.Context(self.target_model, n_ctx=settings.ctx_size, n_threads=settings.threads)
            if {"draft", "auto"} & set(settings.modes):
                for path in settings.drafts:
                    self._load_draft(path)
        except BaseException:
            self.close()
            raise

    def _load_draft(self, path: str) -> None:

        name = Path(path).name
        while name in self.refused or any(d.name == name for d in self.drafts):
            name += "'"  # the same file name twice: keep the rows apart
        # The vocabulary alone decides compatibility: a refused draft's weights never load.
        with llama.Model(path, vocab_only=True) as vocab_model:
            try:
                compatibility = ensure_compatible(self.target_model, vocab_model)
                self.warnings += [f"{name}: {w}" for w in compatibility.warnings]
            except IncompatibleModelsError as e:
                if not self.settings.cross_vocab:
                    self.refused[name] = e.message
                    return
                compatibility = None
                self.warnings.append(f"{name} has another vocabulary: its drafts go through text (--cross-vocab)")
        model = llama.Model(path, n_gpu_layers=self.settings.n_gpu_layers)
        if not model.has_partial_kv_removal:
            model.close()
            self.refused[name] = f"{name} is recurrent/hybrid: its cache cannot be rolled back after rejected drafts"
            return
        try:
            context = llama.Context(model, n_ctx=self.settings.ctx_size, n_threads=self.settings.threads)
        except SpecllmError:
            model.close()
            raise
        self.drafts.append(LoadedDraft(name, model, context, compatibility))

    @property
    def configs(self) -> list[BenchConfig]:
        return sweep(self.settings.modes, self.settings.ks, [d.name for d in self.drafts])

    # -- prompts

    def prepare(self, prompts: Sequence[BenchPrompt]) -> dict[Optional[int], list[PreparedPrompt]]:
        """Token ids per context length (one group, None, without --context-lengths)."""
        s = self.settings
        groups: dict[Optional[int], list[PreparedPrompt]] = {}
        for length in s.context_lengths or (None,):
            group = []
            for prompt in prompts:
                if length is None:
                    tokens = tokenize_prompt(self.target_model, prompt.text, s.chat)
                else:
                    tokens = pad_to_length(self.target_model, prompt.text, length, filler_for(prompt, prompts), s.chat)
                    if tokens is None:
                        continue
                group.append(PreparedPrompt(tokens, prompt.category, length))
            if group:
                groups[length] = group
            else:
                self.warnings.append(f"no prompt is shorter than {length} tokens: that length is left out")
        if not groups:
            raise UsageError("every prompt is longer than the context lengths asked for")
        longest = max(len(p.tokens) for g in groups.values() for p in g)
        needed = longest + s.max_tokens + max(s.ks) + 2
        if needed > s.ctx_size:
            raise UsageError(
                f"the longest prompt ({longest} tokens) plus {s.max_tokens} generated does not fit the "
                f"{s.ctx_size}-token context", hint=f"raise --ctx-size to {needed} or more")
        return groups

    # -- measuring

    def run(self, prompts: Sequence[BenchPrompt], progress: Optional[ProgressCallback] = None) -> BenchResult:
        s = self.settings
        groups = self.prepare(prompts)
        configs = self.configs
        total = len(configs) * (1 + sum(len(g) for g in groups.values()))  # warm-ups, then measured runs
        done = 0

        def report(what: str, finished: bool = False) -> None:
            nonlocal done
            if progress is not None:
                progress(what, done, total)
            done += finished

        base_seed = s.seed if s.seed is not None else secrets.randbits(32)
        totals = Totals()
        costs: dict[Optional[int], MeasuredCosts] = {}
        categories = list(dict.fromkeys(p.category for g in groups.values() for p in g))
        for length, group in groups.items():
            if not costs:
                for config in configs:
                    report(f"warm-up {config.label}", finished=True)
                    # Discarded: it pages the weights in and lets llama.cpp allocate its buffers
                    # for each batch size, before anything is timed.
                    self._generate(config, group[0].tokens, s.warmup_tokens, base_seed, _eager_auto(config))
            report("timing decodes" + (f" at {length} tokens" if length else ""))
            costs[length] = self._measure_costs(group[0].tokens)
            # auto learns across a group's prompts, as an engine does across generations.
            auto_state = {c: (Learned(), costs[length].model_for(c.draft)) for c in configs if c.mode == "auto"}
            for i, prompt in enumerate(group):
                # Rotate the order, so that no configuration always runs right after a prefill.
                for config in configs[i % len(configs):] + configs[: i % len(configs)]:
                    report(f"{config.label} · prompt {i + 1}/{len(group)}", finished=True)
                    stats = self._generate(config, prompt.tokens, s.max_tokens, (base_seed, i), auto_state.get(config))
                    totals.add(config, (prompt.category, length), stats)
                    if len(categories) > 1:
                        totals.add(config, (ALL_CATEGORIES, length), stats)
        report("done")

        group_keys = [(c, length) for length in groups for c in categories]
        if len(categories) > 1:
            group_keys += [(ALL_CATEGORIES, length) for length in groups]
        group_keys = [g for g in group_keys if (configs[0], g) in totals.stats]
        rows = make_rows(configs, group_keys, totals, costs)
        rows += [refused_row(name, reason) for name, reason in self.refused.items()]
        return BenchResult(
            settings=s, target=self.target_model.name, rows=rows,
            best_k=model_best_ks(configs, group_keys, totals, costs), costs=costs, refused=dict(self.refused),
            warnings=list(self.warnings),
        )

    def _measure_costs(self, prompt: Sequence[int]) -> MeasuredCosts:
        """T(1..K+1) and each draft's per-token time, with the cache holding a prompt of the group."""
        costs = MeasuredCosts(prompt_tokens=len(prompt))
        _fill_cache(self.target, prompt[:-1])
        costs.target = _best_times(self.target, range(1, max(self.settings.ks) + 2))
        for draft in self.drafts:
            context = prompt[:-1]
            if draft.through_text:  # the same text in the draft's own ids
                text = self.target_model.vocab.detokenize(context)
                context = draft.model.vocab.tokenize(text, add_special=True, parse_special=False)
            _fill_cache(draft.context, context)
            per_token = _best_times(draft.context, (1,)).get(1)
            if per_token:
                costs.draft[draft.name] = per_token
        return costs

    def _policy(self, config: BenchConfig, auto_state: Optional[tuple[Learned, CostModel]]) -> DraftPolicy:
        s = self.settings
        drafter = self._model_drafter(config.draft) if config.draft else None
        if config.mode == "none":
            return FixedPolicy(NoDrafter(), 0, mode="none")
        if config.mode == "ngram":
            return FixedPolicy(NgramDrafter(s.ngram_sizes), config.k, mode="ngram")
        if config.mode == "draft":
            return FixedPolicy(drafter, config.k, mode="draft")
        learned, costs = auto_state or (Learned(), CostModel())
        return AutoPolicy(NgramDrafter(s.ngram_sizes), drafter, max_k=config.k, costs=costs, learned=learned)

    def _model_drafter(self, name: str) -> Drafter:
        draft = next(d for d in self.drafts if d.name == name)
        return make_model_drafter(draft.context, self.target_model.vocab, draft.compatibility, self.settings.params,
                                  ignore_eos=self.settings.ignore_eos)

    def _generate(
        self,
        config: BenchConfig,
        prompt: Sequence[int],
        max_tokens: int,
        seed: int | tuple[int, int],
        auto_state: Optional[tuple[Learned, CostModel]] = None,
    ) -> SpecStats:
        generation = Generation(
            self.target,
            self._policy(config, auto_state),
            prompt,
            params=self.settings.params,
            max_tokens=max_tokens,
            # The same seed for every configuration of a prompt: sampled runs stay comparable.
            rng=np.random.default_rng(seed),
            ignore_eos=self.settings.ignore_eos,
        )
        for _ in generation:
            pass
        return generation.stats

    def close(self) -> None:
        for draft in self.drafts:
            draft.context.close()
            draft.model.close()
        self.drafts = []
        if self.target is not None:
            self.target.close()
        self.target_model.close()

    def __enter__(self) -> "Bench":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _eager_auto(config: BenchConfig) -> tuple[Learned, CostModel]:
    """auto's state for a warm-up: flat costs, so that drafting always looks worth its time."""
    return Learned(), CostModel(target={n: 1.0 for n in range(1, config.k + 2)}, draft={1: 0.0})


def _best_times(ctx: llama.Context, sizes: Sequence[int]) -> dict[int, float]:
    best: dict[int, float] = {}
    for _ in range(TIMING_REPEATS):
        for n, seconds in time_batches(ctx, sizes).items():
            best[n] = min(seconds, best.get(n, seconds))
    return best


def _fill_cache(ctx: llama.Context, tokens: Sequence[int]) -> None:
    """Make the cache hold exactly `tokens`, decoding only what it lacks."""
    ctx.truncate(common_prefix_length(ctx.tokens, tokens))
    if len(tokens) > ctx.n_past:
        ctx.decode(list(tokens[ctx.n_past:]))


def run_bench(settings: BenchSettings, prompts: Sequence[BenchPrompt],
              progress: Optional[ProgressCallback] = None) -> BenchResult:
    with Bench(settings) as bench:
        return bench.run(prompts, progress)


def result_json(result: BenchResult) -> str:
    return json.dumps(result.to_dict(), indent=2, ensure_ascii=False)

