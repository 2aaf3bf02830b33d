"""Loads the target (and draft) once and runs generations on them.

The CLI builds an `EngineConfig`, the engine turns it into llama.cpp models, contexts and a
draft policy, and each `generate` call returns a `Generation` to iterate.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, replace
from typing import Optional, Sequence


from . import llama
from .drafting.compat import Compatibility, ensure_compatible
from .drafting.crossvocab import CrossVocabDrafter
from .drafting.base import Drafter, ModelDrafter, NgramDrafter, NoDrafter
from .errors import IncompatibleModelsError, ModelLoadError, UsageError
from . import paths
from .config import (  # noqa: F401  (EngineConfig and the defaults are also importable from here)
    AUTO_DEFAULT_K, DEFAULT_CTX_SIZE, DEFAULT_K, DEFAULT_NGRAM_SIZES, EngineConfig, check_draft_for_mode, default_k,
)
from .paths import cost_profile_path
from .sampling import DEFAULT_SAMPLER, Sampler, SamplingParams
from .speculative import DraftPolicy, FixedPolicy, Generation

# A user message that no template changes: what a template renders after it hands over to the
# assistant.
CHAT_PROBE = "\x1fspecllm-chat-probe\x1f"


@dataclass(frozen=True)
class Request:
    """One prompt's settings; --jsonl lines may override them."""

    max_tokens: Optional[int] = 256
    params: SamplingParams = SamplingParams()
    seed: Optional[int] = None
    chat: bool = False
    ignore_eos: bool = False
    truncate: bool = False
    # Per-request speculation settings (bench runs, server requests); None: the engine's own.
    mode: Optional[str] = None
    k: Optional[int] = None
    # "gumbel" (drafter-invariant: one seed, one text whatever the drafter) or "rejection".
    sampler: str = DEFAULT_SAMPLER
    # Stop strings (server): generation ends before the first one; they are not emitted.
    stop: tuple[str, ...] = ()
    # Log-probabilities (server's logprobs): each token's and this many alternatives' (None: none).
    logprobs: Optional[int] = None


class Engine:
    def __init__(self, config: EngineConfig, *, warnings: Optional[list[str]] = None):
        check_draft_for_mode(config.mode, has_draft=bool(config.draft))
        if config.draft_lora and not config.draft:
            raise UsageError("--draft-lora needs a draft model (-md)")
        self.config = config
        self.warnings: list[str] = warnings if warnings is not None else []
        self.target_model: Optional[llama.Model] = None
        self.target: Optional[llama.Context] = None
        self.draft_model: Optional[llama.Model] = None
        self.draft: Optional[llama.Context] = None
        self.draft_lora: Optional[llama.LoraAdapter] = None  # --draft-lora, applied to `draft`
        self.compatibility: Optional[Compatibility] = None  # None: no draft, or --cross-vocab
        # Auto mode's knowledge, made on first use (see _prepare_auto).
        self.costs = None
        self.learned = None
        self.memory = None
        self._memory_file = None
        self._assistant_header: Optional[bytes] = None  # see hands_over_to_assistant
        self._profile_key: Optional[str] = None
        # Auto mode's rounds, prediction against outcome (`generate --trace`): a RoundTrace.
        self.trace = None
        try:
            self._load()
        except BaseException:  # a refused draft or Ctrl-C while loading: free what was loaded
            self.close()
            raise

    def _load(self) -> None:
        config = self.config
        self.target_model = llama.Model(config.target, n_gpu_layers=config.n_gpu_layers, rpc=config.rpc)
        if config.mode != "none" and not self.target_model.has_partial_kv_removal:
            raise IncompatibleModelsError(
                f"{self.target_model.name} is a recurrent/hybrid model: its cache cannot be rolled back "
                "after rejected drafts, so speculative decoding would be wrong",
                hint="use --mode none",
            )
        self.target = llama.Context(self.target_model, n_ctx=config.ctx_size, n_threads=config.threads,
                                    n_seq=config.parallel)
        if config.draft and config.mode in ("draft", "auto"):
            self._load_draft()
        if config.mode == "auto":
            self._prepare_auto()

    def _load_draft(self) -> None:
        cfg = self.config
        ngl = cfg.n_gpu_layers if cfg.draft_n_gpu_layers is None else cfg.draft_n_gpu_layers
        self.draft_model = llama.Model(cfg.draft, n_gpu_layers=ngl)
        try:
            self.compatibility = ensure_compatible(self.target_model, self.draft_model)
            self.warnings.extend(self.compatibility.warnings)
        except IncompatibleModelsError as refusal:
            # Another vocabulary: the draft can still propose text (crossvocab.py), but only when
            # asked to: a mismatched pair is more often a mistake than a plan. In auto mode the
            # cross-vocabulary draft then competes with n-grams and plain steps per round.
            if not cfg.cross_vocab:
                refusal.hint = "pass --cross-vocab to draft through text, or pick a draft with the target's tokenizer"
                raise
            self.compatibility = None
        if not self.draft_model.has_partial_kv_removal:
            raise IncompatibleModelsError(f"draft {self.draft_model.name} is recurrent/hybrid: its cache cannot be rolled back")
        self.draft = llama.Context(
            self.draft_model,
            n_ctx=cfg.draft_ctx_size or cfg.ctx_size,
            n_threads=cfg.draft_threads or cfg.threads,
            n_seq=cfg.parallel,  # one draft sequence per target sequence: slots never disturb each other
        )
        if cfg.draft_lora:
            self.draft_lora = llama.LoraAdapter(self.draft_model, cfg.draft_lora)
            llama.set_lora(self.draft, self.draft_lora)

    @property
    def mode(self) -> str:
        return self.config.mode

    def tokenize_prompt(self, text: str, request: Request) -> list[int]:
        if not text.strip():
            raise UsageError("the prompt is empty")
        if request.chat:
            text = self.target_model.apply_chat_template(text)
        tokens = self.target_model.vocab.tokenize(text, add_special=True, parse_special=True)
        if not tokens:
            raise UsageError("the prompt has no tokens")
        if request.truncate:
            # Keep the end of the prompt and leave room to generate.
            room_to_generate = max(1, min(request.max_tokens or 1, self.target.n_ctx // 4))
            keep = self.target.n_ctx - room_to_generate
            if len(tokens) > keep:
                tokens = tokens[-keep:]
        return tokens

    @property
    def n_slots(self) -> int:
        """Sequences that can generate at once (--parallel)."""
        return self.target.n_seq

    def make_policy(self, request: Request, prompt: Sequence[int] = (), slot: int = 0) -> DraftPolicy:
        cfg = self.config
        mode = request.mode or cfg.mode
        k = request.k if request.k is not None else cfg.k
        if mode == "none":
            return FixedPolicy(NoDrafter(), 0, mode="none")
        if mode == "ngram":
            return FixedPolicy(NgramDrafter(cfg.ngram_sizes), k, mode="ngram")
        model_drafter = self._model_drafter(request, slot)
        if mode == "draft":
            check_draft_for_mode(mode, has_draft=model_drafter is not None)
            return FixedPolicy(model_drafter, k, mode="draft")
        if mode != "auto":
            raise UsageError(f"unknown mode {mode!r} (auto, draft, ngram or none)")
        if self.costs is None:
            self._prepare_auto()
        from .auto import AutoPolicy

        return AutoPolicy(self._lookup_drafters(), model_drafter, max_k=k, costs=self.costs,
                          learned=self.learned, memory=self.memory,
                          chat=request.chat or self.hands_over_to_assistant(prompt), trace=self.trace)

    def hands_over_to_assistant(self, prompt: Sequence[int]) -> bool:
        """Whether `prompt` ends as the target's chat template hands over to the assistant, so
        that what follows is a chat answer, however the template got there (--chat, the
        server, or a prompt rendered by the user or a benchmark script)."""
        if self._assistant_header is None:
            try:
                rendered = self.target_model.apply_chat_template(CHAT_PROBE)
            except ModelLoadError:  # no template: no chat answers
                rendered = CHAT_PROBE
            self._assistant_header = rendered.split(CHAT_PROBE)[-1].encode("utf-8")
        header = self._assistant_header
        if not header.strip():
            return False
        tail = self.target_model.vocab.detokenize(prompt[-(len(header) + 2):])
        return tail.endswith(header)

    def _lookup_drafters(self) -> list[Drafter]:
        """Free drafts: the suffix index over the text so far, and over earlier outputs."""
        from .drafting.suffix import lookup_drafters

        return lookup_drafters(self.memory)

    def _model_drafter(self, request: Request, slot: int = 0) -> Optional[Drafter]:
        if self.draft is None:
            return None
        return make_model_drafter(self.draft.sequence(slot), self.target_model.vocab, self.compatibility,
                                  ignore_eos=request.ignore_eos)

    def forget_learning(self) -> None:
        """Start the next generation as a new process would: the saved cost profile re-read
        (after this engine's refinements are saved), this machine's speed re-measured, nothing
        learned and no memory of earlier outputs (used by scripts/auto-vs-plain)."""
        if self._profile_key and self.learned is not None and self.learned.rounds:
            self._save_auto_profile()
        self.costs = self.learned = self.memory = None

    def _prepare_auto(self) -> None:
        """Auto mode's knowledge: this machine's measured costs (calibrated once, then cached
        per models and settings) and what it learns about acceptance, shared by generations."""
        from .auto import ContentionMeter, CostModel, Learned

        cfg = self.config
        # Busy decodes are told by CPU time where the work runs on this machine's cores.
        cpu_bound = not cfg.n_gpu_layers and not cfg.rpc
        self.costs = CostModel(meter=ContentionMeter(cfg.threads, cpu_bound=cpu_bound))
        self.learned = Learned()
        key = cost_profile_key(cfg, self.target_model, self.draft_model, self.draft_lora)
        self._profile_key = key
        # Sizes above k + 1 come from the fitted curve if a request ever asks for more.
        max_batch = min(cfg.k + 1, self.target.n_batch)
        if self.costs.load(cost_profile_path(), key):
            # The saved profile is a prior; this machine's speed now is measured, not assumed.
            self.costs.measure_speed(self.target, self.draft)
        else:
            self.costs.calibrate(self.target, self.draft, max_batch=max_batch)
            self.costs.save(cost_profile_path(), key)
        self.learned.start_from(self.costs.model_rate_ratio, self.costs.plain_rate())
        self._open_memory()

    def _open_memory(self) -> None:
        """Earlier outputs of this target: kept for this process, and on disk only when asked."""
        from .drafting.memory import OutputMemory, memory_path

        if self.config.memory is False:
            return
        vocab = self.target_model.vocab.n_tokens
        key = f"{self.target_model.name}|{self.target_model.size_bytes}"
        self._memory_file = memory_path(paths.cache_dir(), key) if self.config.memory else None
        if self._memory_file is not None:
            self.memory = OutputMemory.load(self._memory_file, key, n_vocab=vocab)
        else:
            self.memory = OutputMemory(model_key=key, n_vocab=vocab)

    def _save_auto_profile(self) -> None:
        """Keep the refined costs and the draft model's verdict for the next run."""
        ratio = self.learned.model_verdict_to_save(self.costs.plain_rate())
        if ratio is not None:
            self.costs.model_rate_ratio = ratio
        self.costs.save(cost_profile_path(), self._profile_key)

    def generate(self, prompt: Sequence[int], request: Request, slot: int = 0) -> Generation:
        """A generation to iterate (or to run with others: batch.py), on sequence `slot` of the
        target's cache (and of the draft's). Without a seed one is drawn, and reported
        (generation.seed) so that a sampled run can be replayed."""
        seed = request.seed if request.seed is not None else secrets.randbits(32)
        generation = Generation(
            self.target.sequence(slot),
            self.make_policy(request, prompt, slot),
            prompt,
            sampler=Sampler(request.params, request.sampler, seed),
            max_tokens=request.max_tokens,
            ignore_eos=request.ignore_eos,
            logprobs=request.logprobs,
        )
        if self.draft_lora is not None and generation.stats.mode in ("draft", "auto"):
            generation.stats.draft_lora = self.draft_lora.name
        return generation

    def close(self) -> None:
        if self._profile_key and self.learned is not None and self.learned.rounds:
            self._save_auto_profile()
        if self.memory is not None and self._memory_file is not None and len(self.memory):
            self.memory.save(self._memory_file)
        for obj in (self.draft, self.draft_lora, self.target, self.draft_model, self.target_model):
            if obj is not None:
                obj.close()
        self.draft = self.draft_lora = self.target = self.draft_model = self.target_model = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cost_profile_key(config: EngineConfig, target_model: llama.Model, draft_model: Optional[llama.Model],
                     draft_lora: Optional[llama.LoraAdapter] = None) -> str:
    """Auto mode's saved costs are kept per models and settings (see auto/costs.py). An adapter
    changes what the draft is worth: its draft model's verdict is kept apart."""
    draft = (draft_model.name + (f"+{draft_lora.name}" if draft_lora else "")) if draft_model else "-"
    return "|".join(str(x) for x in (
        target_model.name, target_model.size_bytes, config.threads or os.cpu_count(), config.n_gpu_layers,
        draft, config.draft_threads, config.draft_n_gpu_layers,
        ",".join(config.rpc) or "local",
    ))


def make_model_drafter(
    context: llama.Context | llama.KVSequence,
    target_vocab: llama.Vocab,
    compatibility: Optional[Compatibility],
    *,
    ignore_eos: bool,
) -> Drafter:
    """The drafter for a loaded draft model: token ids when the vocabularies pair
    (`compatibility`), through text when they do not (None: --cross-vocab)."""
    if compatibility is None:
        return CrossVocabDrafter(context, target_vocab)
    # Shared ids whose texts differ would be verified as something else: never propose them.
    suppressed = list(compatibility.masked_ids)
    if ignore_eos:
        suppressed += context.model.vocab.eog_ids
    return ModelDrafter(context, target_vocab.n_tokens, suppressed)


def with_overrides(request: Request, overrides: dict) -> Request:
    """A request with a --jsonl line's per-prompt settings applied."""
    params = request.params
    p_fields = {"temp": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p"}
    param_updates = {p_fields[k]: v for k, v in overrides.items() if k in p_fields}
    if param_updates:
        params = replace(params, **param_updates)
    req_fields = {"max_tokens", "seed", "chat", "ignore_eos", "truncate", "sampler"}
    return replace(request, params=params, **{k: v for k, v in overrides.items() if k in req_fields})
