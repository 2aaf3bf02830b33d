"""Which draft pays for a target on this machine: `specllm drafts`, measured on real prompts.

For each prompt the target's own greedy output is generated once (plain decoding through
`Engine`). Every candidate is then measured against those outputs, never by running a
speculative generation per k:

- a draft of the same vocabulary: ONE teacher-forced batched decode of the draft over
  prompt + output gives its greedy choice at every output position
  (`ModelDrafter.greedy_choices`). That is exact for greedy drafting: a greedy draft only ever
  continues along accepted tokens, i.e. along the output, so its choice after output[:j] is all
  a round starting anywhere before j needs to know;
- a draft of another vocabulary: teacher forcing through text is not exact. The draft reads
  the target's text re-tokenised with its own tokenizer, and where a round starts changes that
  tokenization (a word the target split across rounds is read as one draft token, or not), and
  the drafted text is cut into target tokens with the history's tail. So the real
  `CrossVocabDrafter` is replayed at the round starts that some k visits, once per position for
  all the lengths wanted there (`propose_lengths`): exact, and cheap next to running each k;
- the lookup drafter (no model): the suffix drafter over prompt + output so far, replayed the
  same way;
- a draft with a LoRA adapter (`with_adapters`: --draft-lora, a pair's draft_lora) is one more
  candidate, measured as its draft is with the adapter applied to its context.

replay.py turns those proposals into the rounds `generate --mode draft -k K --temp 0` would
play, for every k; the costs are the target's T(n) from auto mode's cost model (its saved profile
re-checked, else a calibration) and the draft's time per token, timed on a few one-token decodes;
bench's cost model prices the rounds (`predicted_speedup`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from .. import llama
from ..auto import CostModel, time_batches
from ..bench.costs import MeasuredCosts, predicted_speedup
from ..config import DEFAULT_CTX_SIZE, EngineConfig
from ..engine import Engine, Request, cost_profile_key, make_model_drafter
from ..errors import IncompatibleModelsError, ModelLoadError, SpecllmError
from ..paths import cost_profile_path
from ..registry import LocalModel
from ..registry.gguf_header import GGUFHeaderError, read_header
from ..registry.model_facts import ModelFacts, read_model_facts
from ..sampling import DraftChooser, Sampler, SamplingParams
from ..stats import SpecStats
from .compat import Compatibility, VocabSummary, check_vocabularies
from .crossvocab import CrossVocabDrafter
from .replay import Proposal, RecordedOutput, ReplayedRounds, agreement_proposals, replay_fixed_k
from .suffix import SuffixDrafter

SAME_VOCAB, CROSS_VOCAB, LOOKUP = "same vocabulary", "cross-vocabulary", "lookup"
# Draft lengths tried: a model draft rarely pays beyond 8 tokens on a CPU (each costs a draft
# decode); a lookup costs nothing to draft, so longer copies are worth pricing.
MODEL_KS = tuple(range(1, 9))
LOOKUP_KS = (1, 2, 3, 4, 5, 6, 8, 12, 16)
# One-token draft decodes timed for the draft's cost per token (the fastest counts: load only slows).
DRAFT_TIMINGS = 3
GREEDY = DraftChooser(Sampler(SamplingParams(temperature=0.0)), 0)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Prompt:
    text: str
    chat: bool = False  # rendered in the target's chat template


@dataclass(frozen=True)
class Candidate:
    """A local model that might draft: what -md takes, its file, and its header facts."""

    name: str
    path: Path
    facts: Optional[ModelFacts] = None
    lora: Optional[Path] = None  # a LoRA adapter applied to it (--draft-lora, a pair's draft_lora)


@dataclass(frozen=True)
class KPrediction:
    k: int
    tokens_per_round: float
    speedup: Optional[float]
    acceptance_by_position: tuple[float, ...]


@dataclass
class DraftRow:
    """One candidate's verdict: its predictions per k, or why it was skipped."""

    name: str
    relation: str
    path: Optional[Path] = None
    facts: Optional[ModelFacts] = None
    size_ratio: Optional[float] = None  # draft parameters / target parameters
    per_k: list[KPrediction] = field(default_factory=list)
    skipped: Optional[str] = None
    draft_ms_per_token: Optional[float] = None
    lora: Optional[Path] = None  # the LoRA adapter the draft was measured with

    @property
    def best(self) -> Optional[KPrediction]:
        priced = [p for p in self.per_k if p.speedup is not None]
        return max(priced, key=lambda p: (p.speedup, -p.k)) if priced else None


@dataclass
class Selection:
    target: Path
    target_facts: Optional[ModelFacts]
    rows: list[DraftRow]  # measured rows best first, then the skipped ones
    n_prompts: int
    generated_tokens: int
    target_ms: dict[int, float]

    @property
    def recommended(self) -> Optional[DraftRow]:
        """The best row when it beats plain decoding; None when nothing pays."""
        best = self.rows[0] if self.rows and self.rows[0].best else None
        return best if best is not None and best.best.speedup > 1.0 else None


@dataclass(frozen=True)
class SelectionSettings:
    max_tokens: int = 128
    chat: bool = False
    threads: Optional[int] = None
    ctx_size: int = DEFAULT_CTX_SIZE  # as `generate`, so that the rounds are those it would play
    model_ks: Sequence[int] = MODEL_KS
    lookup_ks: Sequence[int] = LOOKUP_KS


def select_drafts(target: Path, candidates: Sequence[Candidate], prompts: Sequence[Prompt],
                  settings: SelectionSettings = SelectionSettings(), progress: Progress = lambda _: None,
                  target_facts: Optional[ModelFacts] = None) -> Selection:
    """Measure every candidate (and the lookup drafter) for `target` on `prompts`; rows best first."""
    config = EngineConfig(target=str(target), mode="none", ctx_size=settings.ctx_size, threads=settings.threads)
    with Engine(config) as engine:
        if not engine.target_model.has_partial_kv_removal:
            raise IncompatibleModelsError(
                f"{engine.target_model.name} is a recurrent/hybrid model: its cache cannot be rolled back after "
                "rejected drafts, so no draft can speed it up")
        plain = SpecStats(mode="none")
        outputs = record_outputs(engine, prompts, settings, progress, plain)
        progress("timing the target's decodes (T(n))")
        costs = target_costs(engine, config, calibrate_up_to=max(settings.model_ks) + 1,
                             price_up_to=max(*settings.model_ks, *settings.lookup_ks) + 1)
        # As bench does: the plain runs say how much slower a decode was while generating than
        # when timed (cache depth, load) and what the loop costs a round outside the decodes.
        costs.calibrate(plain)
        target_model = engine.target_model
        rows = [lookup_row(outputs, settings.lookup_ks, target_model.vocab, costs)]
        target_vocab = VocabSummary.from_model(target_model)
        for candidate in candidates:
            progress(f"measuring {candidate.name}")
            rows.append(candidate_row(candidate, target_model, target_vocab, outputs, settings, costs,
                                      target_vocab_id=target_facts.vocab_id if target_facts else None))
    measured = sorted((r for r in rows if r.best), key=lambda r: -r.best.speedup)
    return Selection(
        target=target, target_facts=target_facts, rows=measured + [r for r in rows if not r.best],
        n_prompts=len(outputs), generated_tokens=sum(len(o.tokens) for o in outputs),
        target_ms={n: t * 1e3 for n, t in costs.target.items()},
    )


def record_outputs(engine: Engine, prompts: Sequence[Prompt], settings: SelectionSettings,
                   progress: Progress, plain: Optional[SpecStats] = None) -> list[RecordedOutput]:
    """The target's greedy output of each prompt, as `generate --mode none --temp 0` gives it;
    the runs' statistics are pooled into `plain`."""
    outputs = []
    for i, item in enumerate(prompts, 1):
        progress(f"prompt {i}/{len(prompts)}: the target's greedy output ({settings.max_tokens} tokens at most)")
        request = Request(max_tokens=settings.max_tokens, params=SamplingParams(temperature=0.0),
                          chat=item.chat or settings.chat)
        try:
            prompt = engine.tokenize_prompt(item.text, request)
        except ModelLoadError:
            if settings.chat or not item.chat:
                raise
            # A built-in chat prompt for a model without a chat template: its raw text.
            request = replace(request, chat=False)
            prompt = engine.tokenize_prompt(item.text, request)
        generation = engine.generate(prompt, request)
        for _ in generation:
            pass
        if plain is not None:
            plain.add(generation.stats)
        outputs.append(RecordedOutput(list(prompt), list(generation.tokens), generation.end_token, settings.max_tokens))
    return outputs


def target_costs(engine: Engine, config: EngineConfig, *, calibrate_up_to: int, price_up_to: int) -> MeasuredCosts:
    """T(n) for n = 1..price_up_to from auto mode's cost model: a saved profile of this target
    (re-checked by timing T(1), T(2), T(3), T(9) now), else a calibration of the sizes up to
    calibrate_up_to (larger ones from its fitted line). A calibration is not saved: auto mode
    calibrates the longer drafts it uses itself."""
    model = CostModel()
    key = _saved_profile_key(cost_profile_key(config, engine.target_model, None))
    if key is not None and model.load(cost_profile_path(), key):
        model.measure_speed(engine.target)
    else:
        model.calibrate(engine.target, None, max_batch=min(calibrate_up_to, engine.target.n_batch))
    return MeasuredCosts(depth=engine.target.n_past, target={n: model.target_time(n) for n in range(1, price_up_to + 1)})


def _saved_profile_key(own_key: str) -> Optional[str]:
    """The profile auto mode saved for this target alone, else for it with any draft (T(n) is the
    target's; the key's draft fields do not change it)."""
    try:
        keys = list(json.loads(cost_profile_path().read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if own_key in keys:
        return own_key
    fields = own_key.split("|")
    for key in keys:
        parts = key.split("|")
        if len(parts) == len(fields) and parts[:4] == fields[:4] and parts[-1] == fields[-1]:
            return key
    return None


def lookup_row(outputs: Sequence[RecordedOutput], ks: Sequence[int], vocab: llama.Vocab,
               costs: MeasuredCosts) -> DraftRow:
    """The suffix drafter over each prompt + output so far, replayed at the rounds' starts."""
    rounds: dict[int, ReplayedRounds] = {}
    for output in outputs:
        drafter = SuffixDrafter()
        drafter.begin(output.prompt)

        def propose_at(n: int, lengths: Sequence[int], output=output, drafter=drafter) -> dict[int, Proposal]:
            history = output.prompt + output.tokens[:n]
            drafts = {k: drafter.propose(history, k) for k in lengths}
            return {k: Proposal(tuple(d.tokens), d.source) for k, d in drafts.items() if d.tokens}

        replay_fixed_k(output, ks, propose_at, vocab.is_eog, into=rounds)
    return DraftRow(name="lookup", relation=LOOKUP, per_k=predictions(rounds, costs, None), size_ratio=0.0)


def candidate_row(candidate: Candidate, target_model: llama.Model, target_vocab: VocabSummary,
                  outputs: Sequence[RecordedOutput], settings: SelectionSettings, costs: MeasuredCosts,
                  target_vocab_id: Optional[str] = None) -> DraftRow:
    """Measure one candidate, or say why it cannot draft for the target."""
    row = DraftRow(name=candidate.name, relation="-", path=candidate.path, facts=candidate.facts, lora=candidate.lora)
    draft_vocab_id = candidate.facts.vocab_id if candidate.facts else None
    if target_vocab_id and draft_vocab_id:  # the headers' guess, for a row skipped before the check
        row.relation = SAME_VOCAB if draft_vocab_id == target_vocab_id else CROSS_VOCAB
    params = candidate.facts.parameters if candidate.facts else 0
    if params and target_model.n_params:
        row.size_ratio = params / target_model.n_params
    if row.size_ratio is not None and row.size_ratio >= 1.0:
        row.skipped = f"not smaller than the target ({params:,} against {target_model.n_params:,} parameters)"
        return row
    try:
        with llama.Model(candidate.path) as draft_model:
            if row.size_ratio is None and draft_model.n_params and target_model.n_params:
                row.size_ratio = draft_model.n_params / target_model.n_params
                if row.size_ratio >= 1.0:
                    row.skipped = "not smaller than the target"
                    return row
            if not draft_model.has_partial_kv_removal:
                row.skipped = "a recurrent or hybrid model: its cache cannot be rolled back after rejected drafts"
                return row
            compatibility = check_vocabularies(target_vocab, VocabSummary.from_model(draft_model))
            row.relation = SAME_VOCAB if compatibility.compatible else CROSS_VOCAB
            adapter = llama.LoraAdapter(draft_model, candidate.lora) if candidate.lora else None
            try:
                rounds, t_draft = measure_rounds(draft_model, target_model, compatibility, outputs, settings, adapter)
            finally:
                if adapter is not None:
                    adapter.close()
    except (ModelLoadError, IncompatibleModelsError) as e:
        row.skipped = e.message
        return row
    except SpecllmError as e:  # a decode that failed: this candidate only
        row.skipped = f"measuring failed: {e.message}"
        return row
    key = candidate.name + (f"+{candidate.lora}" if candidate.lora else "")  # its costs apart from the plain draft's
    costs.draft[key] = t_draft
    row.draft_ms_per_token = t_draft * 1e3
    row.per_k = predictions(rounds, costs, key)
    return row


def _draft_context(model: llama.Model, settings: SelectionSettings,
                   adapter: Optional[llama.LoraAdapter]) -> llama.Context:
    context = llama.Context(model, n_ctx=settings.ctx_size, n_threads=settings.threads)
    if adapter is not None:
        llama.set_lora(context, adapter)
    return context


def measure_rounds(draft_model: llama.Model, target_model: llama.Model, compatibility: Compatibility,
                   outputs: Sequence[RecordedOutput], settings: SelectionSettings,
                   adapter: Optional[llama.LoraAdapter] = None) -> tuple[dict[int, ReplayedRounds], float]:
    """The rounds every k of settings.model_ks would play with this draft (token by token when
    `compatibility` says the vocabularies pair, through text otherwise), with `adapter` applied to
    it, and its seconds per token (the adapter's cost included)."""
    measure = _measure_same_vocab if compatibility.compatible else _measure_cross_vocab
    return measure(draft_model, target_model, compatibility, outputs, settings, adapter)


def _measure_same_vocab(draft_model: llama.Model, target_model: llama.Model, compatibility: Compatibility,
                        outputs: Sequence[RecordedOutput], settings: SelectionSettings,
                        adapter: Optional[llama.LoraAdapter]):
    rounds: dict[int, ReplayedRounds] = {}
    with _draft_context(draft_model, settings, adapter) as ctx:
        drafter = make_model_drafter(ctx, target_model.vocab, compatibility, ignore_eos=False)
        for output in outputs:
            choices = drafter.greedy_choices(output.prompt, output.sequence)
            proposals = agreement_proposals(output.sequence, choices, draft_model.vocab.is_eog)
            replay_fixed_k(output, settings.model_ks, proposals, target_model.vocab.is_eog, into=rounds)
        return rounds, _seconds_per_draft_token(ctx)


def _measure_cross_vocab(draft_model: llama.Model, target_model: llama.Model, compatibility: Compatibility,
                         outputs: Sequence[RecordedOutput], settings: SelectionSettings,
                         adapter: Optional[llama.LoraAdapter]):
    with _draft_context(draft_model, settings, adapter) as ctx:
        rounds = cross_vocab_rounds(ctx, target_model.vocab, outputs, settings.model_ks)
        t_draft = _seconds_per_draft_token(ctx)
    for replayed in rounds.values():
        # Drafting through text is priced by what it decoded (bench prices it by draft_seconds).
        replayed.stats.draft_seconds = replayed.draft_decodes * t_draft
    return rounds, t_draft


def cross_vocab_rounds(ctx: llama.Context, target_vocab: llama.Vocab, outputs: Sequence[RecordedOutput],
                       ks: Sequence[int]) -> dict[int, ReplayedRounds]:
    """The rounds every k in `ks` would play with the draft on `ctx` drafting through text
    (tune-draft measures a cross-vocabulary draft, with and without its adapter, with this)."""
    rounds: dict[int, ReplayedRounds] = {}
    drafter = CrossVocabDrafter(ctx, target_vocab)
    for output in outputs:
        drafter.begin(output.prompt)

        def propose_at(n: int, lengths: Sequence[int], output=output) -> dict[int, Proposal]:
            found = drafter.propose_lengths(output.prompt + output.tokens[:n], lengths, GREEDY)
            return {k: Proposal(tuple(d.tokens), d.source, decodes) for k, (d, decodes) in found.items()}

        replay_fixed_k(output, ks, propose_at, target_vocab.is_eog, into=rounds)
    return rounds


def _seconds_per_draft_token(ctx: llama.Context) -> float:
    timed = time_batches(ctx, (1,) * DRAFT_TIMINGS, keep_all=True)
    return min((seconds for _, seconds, _ in timed), default=0.0)


def predictions(rounds: dict[int, ReplayedRounds], costs: MeasuredCosts, draft: Optional[str]) -> list[KPrediction]:
    return [
        KPrediction(
            k=k,
            tokens_per_round=replayed.stats.mean_accepted_length,
            speedup=predicted_speedup(replayed.stats, costs, draft) if replayed.stats.rounds else None,
            acceptance_by_position=tuple(replayed.stats.per_position_acceptance),
        )
        for k, replayed in sorted(rounds.items())
    ]


def local_candidates(target: Path, models: Sequence[LocalModel]) -> tuple[list[Candidate], Optional[ModelFacts]]:
    """Every local model but the target (its copies too), each file once; and the target's facts."""
    target_real = os.path.realpath(target)
    target_facts = None
    seen: set[str] = set()
    candidates = []
    for model in models:
        real = os.path.realpath(model.path)
        if real == target_real:
            target_facts = target_facts or model.facts
        elif real not in seen:
            seen.add(real)
            candidates.append(Candidate(model.name, model.path, model.facts))
    if target_facts is None:
        try:
            target_facts = read_model_facts(target)
        except Exception:  # noqa: BLE001 - facts are for the table; llama.cpp decides whether it loads
            target_facts = None
    return candidates, target_facts


def with_adapters(candidates: Sequence[Candidate], adapters: Sequence[tuple[Optional[Path], Path]]) -> list[Candidate]:
    """The candidates, each followed by itself with each adapter meant for it: (draft file, adapter)
    from a pair of models.toml, or (None, adapter) from --draft-lora, meant for every candidate
    of the adapter's architecture (llama.cpp then checks the shapes: a row says why it refused)."""
    wanted = []
    for draft_file, lora in adapters:
        architecture = adapter_architecture(lora)
        fits = [c for c in candidates if (os.path.realpath(c.path) == os.path.realpath(draft_file) if draft_file
                                          else c.facts is not None and c.facts.architecture == architecture)]
        if draft_file is None and not fits:
            raise IncompatibleModelsError(f"no local draft has the architecture of the LoRA adapter {lora.name} "
                                          f"({architecture})", hint="an adapter applies only to the model it was "
                                          "trained for (specllm tune-draft)")
        wanted += [(c.path, lora) for c in fits]
    result = []
    for candidate in candidates:
        result.append(candidate)
        seen = set()
        for draft_file, lora in wanted:
            if draft_file == candidate.path and os.path.realpath(lora) not in seen:
                seen.add(os.path.realpath(lora))
                result.append(replace(candidate, lora=lora))
    return result


def adapter_architecture(path: Path) -> Optional[str]:
    """The architecture a GGUF LoRA adapter is for; one clear error for a file that is not one."""
    if not Path(path).is_file():
        raise ModelLoadError(f"LoRA adapter not found: {path}")
    try:
        header = read_header(path)
    except (OSError, GGUFHeaderError) as e:
        raise ModelLoadError(f"cannot read the LoRA adapter {path}: {e}") from None
    if header.metadata.get("general.type") != "adapter":
        raise ModelLoadError(f"{path} is not a LoRA adapter (general.type is not 'adapter')",
                             hint="--draft-lora takes an adapter made by `specllm tune-draft`")
    return header.architecture
