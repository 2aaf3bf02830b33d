"""Running a bench: every configuration of the sweep on every prompt, through `Engine`.

A bench run takes exactly the path `specllm generate` takes: an `Engine` loads the models,
checks the draft's vocabulary and tokenizes the prompt (chat template included); each run is
`engine.generate(tokens, request)`, the request saying the configuration's mode and k. One
engine holds the target alone (the baseline and n-gram runs, and auto mode without a draft),
and one engine more per draft model (its draft and auto runs). A draft the engine refuses
(another vocabulary without --cross-vocab, a recurrent model) becomes a row with the reason.

The configurations of one prompt run one after the other, in an order that rotates from one
prompt to the next, so that a slow spell of a shared machine touches them alike. Every run
generates at most `max_tokens`; with `ignore_eos` exactly that many. Auto mode learns across
the prompts of a group, as an engine does across generations, from a fresh start per group.
After a group's runs, decodes are timed for the cost model (costs.py).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..config import MODES
from ..engine import Engine, EngineConfig, Request
from ..errors import IncompatibleModelsError, UsageError
from ..prompts import BenchPrompt
from ..sampling import SamplingParams
from ..stats import SpecStats
from .costs import MeasuredCosts, measure_decodes, timing_depth
from .padding import PreparedPrompt, filler_for, pad_to_length
from .results import BenchResult, GroupKey, Totals, make_rows, model_best_ks, refused_row
from .sweep import ALL_CATEGORIES, DEFAULT_KS, BenchConfig, sweep

WARMUP_TOKENS = 8
PROMPT_MARK = "{prompt}"  # stands for the prompt where the report shows the chat template

# (what is being done, runs done, runs in all)
ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class BenchSettings:
    engine: EngineConfig  # the target and how to load it; each engine gets its own draft, mode and k
    drafts: tuple[str, ...] = ()  # resolved paths
    ks: tuple[int, ...] = DEFAULT_KS
    modes: tuple[str, ...] = MODES
    max_tokens: int = 128
    params: SamplingParams = SamplingParams()
    seed: Optional[int] = None
    ignore_eos: bool = False
    chat: bool = False
    context_lengths: tuple[int, ...] = ()
    warmup_tokens: int = WARMUP_TOKENS

    @property
    def request(self) -> Request:
        """The request every run starts from; each sets its own mode, k, seed and length."""
        return Request(max_tokens=self.max_tokens, params=self.params, chat=self.chat, ignore_eos=self.ignore_eos)


class Bench:
    """The engines, loaded once; `run` measures every configuration on every prompt."""

    def __init__(self, settings: BenchSettings):
        if not settings.ks or min(settings.ks) < 1:
            raise UsageError("the k sweep needs draft lengths >= 1")
        self.settings = settings
        self.warnings: list[str] = []
        self.refused: dict[str, str] = {}
        self.engines: dict[Optional[str], Engine] = {}  # by draft name; None: the target alone
        try:
            self.engines[None] = self._engine(None)
            if {"draft", "auto"} & set(settings.modes):
                for path in settings.drafts:
                    self._open_draft(path)
        except BaseException:
            self.close()
            raise

    def _engine(self, draft: Optional[str], name: Optional[str] = None) -> Engine:
        """An engine on the target, with this draft (a path; `name` in messages) or none."""
        s = self.settings
        if draft is not None:
            mode = "auto" if "auto" in s.modes else "draft"
        else:
            mode = "ngram" if set(s.modes) - {"none"} else "none"  # auto is prepared when first asked
        # --draft-lora belongs to the first draft (-md): the others run as they are.
        lora = s.engine.draft_lora if draft is not None and draft == s.engine.draft else None
        config = replace(s.engine, draft=draft, mode=mode, k=max(s.ks), draft_lora=lora)
        warnings: list[str] = []
        try:
            engine = Engine(config, warnings=warnings)
        except IncompatibleModelsError as e:
            if draft is None:
                e.hint = "use --modes none"
            raise
        self.warnings += [f"{name}: {w}" if name else w for w in warnings]
        return engine

    def _open_draft(self, path: str) -> None:
        name = Path(path).name
        if path == self.settings.engine.draft and self.settings.engine.draft_lora:
            name += f"+{Path(self.settings.engine.draft_lora).name}"  # the rows say which adapter ran
        while name in self.refused or name in self.engines:
            name += "'"  # the same file name twice: keep the rows apart
        try:
            engine = self._engine(path, name)
        except IncompatibleModelsError as e:
            self.refused[name] = e.message
            return
        self.engines[name] = engine
        if engine.draft is not None and engine.compatibility is None:
            self.warnings.append(f"{name} has another vocabulary: its drafts go through text (--cross-vocab)")

    @property
    def base(self) -> Engine:
        return self.engines[None]

    @property
    def drafts(self) -> list[str]:
        return [name for name in self.engines if name is not None]

    @property
    def configs(self) -> list[BenchConfig]:
        return sweep(self.settings.modes, self.settings.ks, self.drafts)

    def chat_template(self) -> Optional[str]:
        """The target's chat template around a prompt, as --chat applies it (None without --chat)."""
        return self.base.target_model.apply_chat_template(PROMPT_MARK) if self.settings.chat else None

    # -- prompts

    def prepare(self, prompts: Sequence[BenchPrompt]) -> dict[Optional[int], list[PreparedPrompt]]:
        """Token ids per context length (one group, None, without --context-lengths)."""
        s = self.settings
        request = s.request
        groups: dict[Optional[int], list[PreparedPrompt]] = {}
        for length in s.context_lengths or (None,):
            group = []
            for prompt in prompts:
                if length is None:
                    tokens = self.base.tokenize_prompt(prompt.text, request)
                else:
                    tokens = pad_to_length(self.base, prompt.text, length, filler_for(prompt, prompts), request)
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
        if needed > s.engine.ctx_size:
            raise UsageError(
                f"the longest prompt ({longest} tokens) plus {s.max_tokens} generated does not fit the "
                f"{s.engine.ctx_size}-token context", hint=f"raise --ctx-size to {needed} or more")
        return groups

    # -- measuring

    def run(self, prompts: Sequence[BenchPrompt], progress: Optional[ProgressCallback] = None) -> BenchResult:
        s = self.settings
        chat_template = self.chat_template()
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
        first = next(iter(groups.values()))[0].tokens
        for config in configs:
            report(f"warm-up {config.label}", finished=True)
            # Discarded: it pages the weights in and lets llama.cpp allocate its buffers for
            # each batch size, before anything is timed.
            self._generate(config, first, base_seed, s.warmup_tokens)

        totals = Totals()
        costs: dict[GroupKey, MeasuredCosts] = {}
        categories = list(dict.fromkeys(p.category for g in groups.values() for p in g))
        group_keys: list[GroupKey] = []
        for length, group in groups.items():
            self._forget_learning()
            for i, prompt in enumerate(group):
                # Rotate the order, so that no configuration always runs first on a prompt.
                for config in configs[i % len(configs):] + configs[: i % len(configs)]:
                    report(f"{config.label} · prompt {i + 1}/{len(group)}", finished=True)
                    stats = self._generate(config, prompt.tokens, base_seed + i, s.max_tokens)
                    totals.add(config, (prompt.category, length), stats)
                    if len(categories) > 1:
                        totals.add(config, (ALL_CATEGORIES, length), stats)
            keys = [(c, length) for c in categories if (configs[0], (c, length)) in totals.stats]
            keys += [(ALL_CATEGORIES, length)] if len(categories) > 1 else []
            for key in keys:
                report("timing decodes" + (f" at ~{length} tokens" if length else "") + f" ({key[0]})")
                members = [p for p in group if key[0] in (ALL_CATEGORIES, p.category)]
                costs[key] = self._measure_costs(members, totals.stats[(configs[0], key)],
                                                 totals.prompts[(configs[0], key)])
            group_keys += keys
        report("done")

        rows = make_rows(configs, group_keys, totals, costs, chat_template)
        rows += [refused_row(name, reason) for name, reason in self.refused.items()]
        return BenchResult(
            settings=s, target=self.base.target_model.name, rows=rows,
            best_k=model_best_ks(configs, group_keys, totals, costs), costs=costs, refused=dict(self.refused),
            warnings=list(self.warnings), chat_template=chat_template,
        )

    def _generate(self, config: BenchConfig, prompt: Sequence[int], seed: int, max_tokens: int) -> SpecStats:
        engine = self.engines[config.draft]
        request = replace(self.settings.request, mode=config.mode, k=config.k or None, seed=seed,
                          max_tokens=max_tokens)
        # The same seed for every configuration of a prompt: sampled runs stay comparable.
        generation = engine.generate(prompt, request)
        for _ in generation:
            pass
        return generation.stats

    def _forget_learning(self) -> None:
        """Auto mode starts each group as a new run would (the cost profile and verdicts kept)."""
        for engine in self.engines.values():
            if getattr(engine, "learned", None) is not None:  # auto mode has run on it
                engine.forget_learning()

    def _measure_costs(self, prompts: Sequence[PreparedPrompt], plain: SpecStats, runs: int) -> MeasuredCosts:
        """T(1..K+1) and each draft's per-token time, with the caches at the group's mean depth
        while generating; the machine's pace and the loop's overhead from the plain runs."""
        depth = max(timing_depth(plain, runs), 1)
        text = [t for p in prompts for t in p.tokens]
        cached = (text * (1 + depth // len(text)))[:depth]  # the group's own tokens, as deep as it generated
        target_times = measure_decodes(self.base.target, cached, range(1, max(self.settings.ks) + 2))
        costs = MeasuredCosts(depth=depth, target=target_times)
        for name in self.drafts:
            engine = self.engines[name]
            if engine.draft is None:
                continue
            draft_cached = cached
            if engine.compatibility is None:  # another vocabulary: the same text in the draft's own ids
                text_bytes = engine.target_model.vocab.detokenize(cached)
                draft_cached = engine.draft_model.vocab.tokenize(text_bytes, add_special=True, parse_special=False)
            per_token = measure_decodes(engine.draft, draft_cached, (1,)).get(1)
            if per_token:
                costs.draft[name] = per_token
        costs.calibrate(plain)
        return costs

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.engines = {}

    def __enter__(self) -> "Bench":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_bench(settings: BenchSettings, prompts: Sequence[BenchPrompt],
              progress: Optional[ProgressCallback] = None) -> BenchResult:
    with Bench(settings) as bench:
        return bench.run(prompts, progress)
