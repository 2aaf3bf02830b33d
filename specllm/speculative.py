"""The speculative decoding loop: one loop for every mode.

Each round (`Generation.step`) reads like Algorithm 1 of Leviathan et al. (2023):

    draft     d1..dk from the drafter (k may be 0: a plain decoding step)
    decode    [last, d1..dk] on the target in ONE batch -> p_1..p_{k+1}
    verify    keep the longest accepted prefix d1..dn, then one token of the target's own
              (the correction at the first rejection, or the bonus token when all k pass)
    roll back the target's KV cache to last, d1..dn
    emit      d1..dn and the target's token

The target's cache always holds every token but the last emitted one (`last`), which goes in
front of the next round's drafts: its logits are the target's distribution for d1.

Several generations, each on its own sequence of one target context, take the same round
together (`step_together`): each drafts (`Generation.plan`), ONE decode carries every one's
[last, d1..dk] (and at most one chunk of a prompt that joins), and each verifies its own rows,
rolls back its own sequence and emits (`Generation.conclude`). A generation alone is the case
of one; batch.py runs many.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from .drafting.base import NO_DRAFT, Draft, Drafter
from .drafting.lockstep import Lockstep
from .errors import ContextFullError, DecodeError, PromptTooLongError
from .llama import Context, KVSequence, Rows, common_prefix_length
from .shared_prefix import take_shared_prefix, waits_for_shared_prefix
from .sampling import DraftChooser, Sampler, token_logprobs
from .stats import SpecStats


@dataclass(frozen=True)
class TokenEvent:
    token: int
    piece: bytes  # token bytes; a multi-byte character may be split across events
    from_draft: bool
    # Asked for (Generation's logprobs): the target's log-probability of the token and its
    # likeliest tokens with theirs (sampling.token_logprobs).
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


class DraftPolicy(Protocol):
    """Decides, each round, what to draft and how much."""

    mode: str
    k: int

    def begin(self, prompt: Sequence[int]) -> None: ...

    def draft(self, history: Sequence[int], max_k: int, choose: DraftChooser) -> Draft: ...

    def observe(self, draft: Draft, n_accepted: int, target_seconds: float) -> None: ...

    def share_round(self, rows_before: int) -> None:
        """This round's decode also carries rows_before rows of other sequences."""

    def end(self, output: Sequence[int]) -> None:
        """The generation is over (finished or interrupted); `output` is what it emitted."""


class FixedPolicy:
    """Always ask one drafter for k tokens (k = 0 or no drafter: plain decoding)."""

    def __init__(self, drafter: Drafter, k: int, mode: str | None = None):
        self.drafter = drafter
        self.k = k
        self.mode = mode or drafter.name

    def begin(self, prompt: Sequence[int]) -> None:
        self.drafter.begin(prompt)

    def draft(self, history: Sequence[int], max_k: int, choose: DraftChooser) -> Draft:
        k = min(self.k, max_k)
        return self.drafter.propose(history, k, choose) if k > 0 else NO_DRAFT

    def observe(self, draft: Draft, n_accepted: int, target_seconds: float) -> None:
        pass

    def share_round(self, rows_before: int) -> None:
        pass  # a fixed k whatever the batch

    def end(self, output: Sequence[int]) -> None:
        pass


class Generation:
    """One generation. Iterate it for TokenEvents; then read tokens, finish_reason, stats.

    Iterating runs one round at a time alone (`step`): the N = 1 case of `step_together`,
    which a scheduler (batch.py) calls with every active generation of a shared context.
    Interrupting the iteration (Ctrl-C, closing it) keeps what was emitted; the contexts are
    left consistent enough for the next generation, which re-syncs them by common prefix.
    """

    def __init__(
        self,
        target: KVSequence | Context,
        policy: DraftPolicy,
        prompt: Sequence[int],
        *,
        sampler: Sampler,
        max_tokens: int | None,
        ignore_eos: bool = False,
        logprobs: int | None = None,
    ):
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) > target.n_ctx:
            raise PromptTooLongError(
                f"the prompt has {len(prompt)} tokens but the context holds {target.n_ctx}",
                hint="raise --ctx-size, or use --truncate to keep the end of the prompt",
            )
        # The sequence of the target's cache this generation owns (a Context means its sequence 0).
        self.target: KVSequence = target.sequence(0) if isinstance(target, Context) else target
        self.policy = policy
        self.prompt = list(prompt)
        self.sampler = sampler
        self.max_tokens = max_tokens
        self.vocab = self.target.model.vocab
        self.eog_ids = list(self.vocab.eog_ids) if ignore_eos else []
        self.logprobs = logprobs  # alternatives reported per token (None: no log-probabilities)
        self.history: list[int] = list(prompt)  # prompt + emitted; the target caches all but the last
        self.tokens: list[int] = []
        self.from_draft: list[bool] = []
        self.finish_reason: str | None = None
        self.end_token: int | None = None  # the end-of-generation token that stopped it, if one did
        self.stats = SpecStats(mode=policy.mode, k=policy.k, prompt_tokens=len(prompt))
        self.begun = False  # the policy has seen the prompt (after the target's prefill)
        self.shared_prompt_tokens = 0  # prompt tokens taken from another sequence's cells, not decoded
        self._ended = False
        self._decode_start: float | None = None

    def __iter__(self) -> Iterator[TokenEvent]:
        try:
            while self.finish_reason is None:
                yield from self.step()
        except (KeyboardInterrupt, GeneratorExit):
            self.finish_reason = self.finish_reason or "interrupted"
            raise
        finally:
            self.end()

    def step(self) -> list[TokenEvent]:
        """One round of this generation alone: a prompt chunk, or draft -> verify -> emit."""
        return step_together([self])[0]

    def end(self) -> None:
        """The generation is over (finished, interrupted or dropped): the policy hears it once."""
        if self._ended:
            return
        self._ended = True
        if self._decode_start is not None:
            self.stats.decode_seconds = time.perf_counter() - self._decode_start
        if self.begun:
            self.policy.end(self.tokens)

    @property
    def seed(self) -> int:
        return self.sampler.seed

    @property
    def remaining(self) -> int:
        return self.max_tokens - len(self.tokens) if self.max_tokens is not None else 1 << 30

    # -- one round, in three parts: plan, (the shared decode), conclude ------------------------

    def missing(self) -> list[int]:
        """The tokens the target's cache must get before this generation can draft: history[:-1]
        after the prefix the cache already holds (an earlier request's prompt, or this
        generation's own cache after anything disturbed it)."""
        target = self.target
        if target.owner is not self or not target.in_sync():
            target.resync()  # an interrupt between a decode and its bookkeeping
            target.owner = self
            target.truncate(common_prefix_length(target.tokens, self.history[:-1]))
        if target.n_past < len(self.history) - 1:
            self.shared_prompt_tokens += take_shared_prefix(target, self.history[:-1])
        return self.history[target.n_past : -1]

    def begin(self, prefill_seconds: float = 0.0) -> None:
        """The prompt is in the target's cache: the policy sees it (a draft model prefills)."""
        start = time.perf_counter()
        self.policy.begin(self.prompt)
        self.begun = True
        self.stats.prompt_seconds += prefill_seconds + time.perf_counter() - start
        self._decode_start = time.perf_counter()

    def plan(self, rows_before: int, most_rows: int) -> Plan | None:
        """This round's rows: the last token and the drafts the policy chose, at most most_rows
        in all; None when the generation is finished. `rows_before` rows of other sequences
        share the decode (the policy prices drafts at the marginal cost of a bigger batch)."""
        remaining, room = self.remaining, self.target.room
        if self.finish_reason is None and (remaining <= 0 or room < 1):
            self.finish_reason = "length"
        if self.finish_reason is not None or most_rows < 1:
            return None
        self.policy.share_round(rows_before)
        # At most `remaining` tokens may be emitted: n accepted drafts + 1 of the target's.
        max_k = min(remaining - 1, room - 1, most_rows - 1)
        start = time.perf_counter()
        draft = self._draft(max_k)
        return Plan(self, [self.history[-1], *draft.tokens], draft, self.target.n_past,
                    time.perf_counter() - start)

    def conclude(self, plan: Plan, logits_tgt: np.ndarray, target_seconds: float) -> list[TokenEvent]:
        """Verify this generation's rows of the shared decode, roll back its own sequence, emit."""
        start = time.perf_counter()
        draft = plan.draft
        self._suppress_eog(logits_tgt)
        n_accepted, token_tgt = self.sampler.verify(logits_tgt, draft.tokens, draft.probs, len(self.tokens))
        self.target.truncate(plan.n_cached + 1 + n_accepted)
        target_seconds += time.perf_counter() - start

        self.stats.draft_seconds += plan.draft_seconds
        self.stats.target_seconds += target_seconds
        self.policy.observe(draft, n_accepted, target_seconds)
        emitted = [(t, True) for t in draft.tokens[:n_accepted]] + [(token_tgt, False)]
        events = self._emit(emitted, draft, n_accepted, logits_tgt)
        self.stats.decode_seconds = time.perf_counter() - self._decode_start
        return events

    def _draft(self, max_k: int) -> Draft:
        if max_k <= 0 or self.policy.k <= 0:  # policy.k: the most it ever drafts (0: plain decoding)
            return NO_DRAFT
        try:
            return self.policy.draft(self.history, max_k, DraftChooser(self.sampler, len(self.tokens)))
        except (ContextFullError, DecodeError):
            # The draft's own context is full or failed: this round goes without drafts
            # (its cache was restored by Context.decode); the target carries on.
            return NO_DRAFT

    def _suppress_eog(self, logits: np.ndarray) -> None:
        if self.eog_ids:
            logits[:, self.eog_ids] = -np.inf

    def _emit(self, emitted: list[tuple[int, bool]], draft: Draft, n_accepted: int,
              logits: np.ndarray | None = None) -> list[TokenEvent]:
        """The round's tokens as events, up to an end of generation. With log-probabilities asked
        for, row i of `logits` (the verify decode's) is the target's distribution for token i:
        scored here, after the round's timing, so that auto's costs never include it."""
        events = []
        for i, (token, from_draft) in enumerate(emitted):
            if self.vocab.is_eog(token):
                # End of generation, drafted or not: nothing after it stands.
                self.finish_reason = "stop"
                self.end_token = token
                break
            self.history.append(token)
            self.tokens.append(token)
            self.from_draft.append(from_draft)
            logprob, top = (token_logprobs(logits[i], token, self.logprobs)
                            if self.logprobs is not None and logits is not None else (None, ()))
            events.append(TokenEvent(token, self.vocab.piece(token), from_draft, logprob, tuple(top)))
        self.stats.record_round(draft.source, len(draft), n_accepted, len(events))
        if self.finish_reason is None and self.remaining <= 0:
            self.finish_reason = "length"
        return events


@dataclass
class Plan:
    """What one generation puts in a round's shared decode: [last, d1..dk] to verify."""

    generation: Generation
    tokens: list[int]
    draft: Draft
    n_cached: int  # the sequence's length before the round (rollback point: + 1 + accepted)
    draft_seconds: float


# While other sequences generate, a prompt joins the shared decode at most this many tokens a
# round: each round then stalls the others for about the time of this many rows (a few hundred
# ms for a 1.5B model on a small CPU) instead of a whole prompt's. Alone, a prompt goes in
# chunks of n_batch, as llama.cpp would take it.
PREFILL_CHUNK = 128


def step_together(generations: Sequence[Generation], on_round: Callable[[int, float], None] | None = None,
                  lockstep: Lockstep | None = None) -> list[list[TokenEvent]]:
    """One round for every generation (all on sequences of one target context), each one's
    TokenEvents in order (`on_round(rows, seconds)` hears the shared decode's size and time;
    with a `lockstep` on the draft model's context, the generations plan on threads and their
    draft model decodes go together, see drafting/lockstep.py):

        plan      every generating sequence's last token + the drafts its policy chose,
                  and at most one chunk of a joining prompt
        decode    ONE llama_decode of all those rows
        conclude  each generation verifies its own rows, rolls back its own sequence, emits
    """
    events: dict[int, list[TokenEvent]] = {id(g): [] for g in generations}
    if not generations:
        return []
    context = generations[0].target.context
    joining, generating = _sort_out(generations)
    prefill = _prefill_rows(joining, context.n_batch, len(generating)) if joining else []
    n_prefill = sum(len(r.tokens) for _, r, _ in prefill)
    plans = _plan_drafts(generating, context.n_batch, n_prefill, lockstep)
    rows = [r for _, r, _ in prefill] + [Rows(p.generation.target, p.tokens, "all") for p in plans]
    if not rows:
        return [events[id(g)] for g in generations]

    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        logits = context.decode_rows(rows)
    except ContextFullError:
        # Each sequence's room was checked: llama.cpp found no cells for the batch. Nothing
        # was decoded; the generations in it end as a full context would end them.
        for g in [p.generation for p in plans] + [g for g, _, _ in prefill]:
            g.finish_reason = "length"
        return [events[id(g)] for g in generations]
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    n_rows = n_prefill + sum(len(p.tokens) for p in plans)
    if on_round is not None:
        on_round(n_rows, seconds)
    if len(plans) > 1 and not prefill:  # alone, the policy records its own round (observe)
        _record_round(plans, n_rows, seconds, cpu_seconds)
    for g, _, complete in prefill:
        g.stats.prompt_seconds += seconds
        if complete and not g.begun:
            g.begin()
    for plan, plan_logits in zip(plans, logits[len(prefill):]):
        # Each generation is charged its share of the shared decode, by rows.
        share = seconds * len(plan.tokens) / n_rows
        events[id(plan.generation)] = plan.generation.conclude(plan, plan_logits, share)
    return [events[id(g)] for g in generations]


def _sort_out(generations: Sequence[Generation]) -> tuple[list[tuple[Generation, list[int]]], list[Generation]]:
    """(the generations whose cache still lacks part of their history, with those tokens; the
    ones ready to draft). A new generation whose prompt is already cached begins now."""
    joining, generating = [], []
    for g in generations:
        if g.finish_reason is not None:
            continue
        missing = g.missing()
        if missing:
            joining.append((g, missing))
            continue
        if not g.begun:
            g.begin()
        generating.append(g)
    return joining, generating


def _prefill_rows(joining: list[tuple[Generation, list[int]]], n_batch: int,
                  n_generating: int) -> list[tuple[Generation, Rows, bool]]:
    """Prompt chunks for this round, first come first served: one chunk of PREFILL_CHUNK tokens
    in all while others generate, n_batch alone. (generation, its rows, whether they complete
    its prompt)."""
    budget = min(PREFILL_CHUNK, n_batch - n_generating) if n_generating else n_batch
    chunks = []
    cached_next = [g.history[:-1] for g, _ in joining]  # what each one's cache is to hold
    for i, (g, missing) in enumerate(joining):
        if i and waits_for_shared_prefix(g.target, cached_next[i], cached_next[:i]):
            continue  # it takes those tokens from the one ahead once they are cached
        chunk = missing[:budget]
        if not chunk:
            break
        chunks.append((g, Rows(g.target, chunk, "none"), len(chunk) == len(missing)))
        budget -= len(chunk)
    return chunks


def _plan_drafts(generating: list[Generation], n_batch: int, n_prefill: int,
                 lockstep: Lockstep | None = None) -> list[Plan]:
    """Each generation's rows, planned in turn: each sees the rows planned before it and one
    row for each generation after it (its policy prices drafts at the bigger batch's cost).
    With a lockstep, planned at once: each sees one row for each other generation and gets an
    equal share of the rows left for drafts."""
    rows_before = n_prefill + len(generating) - 1
    most_drafts = n_batch - n_prefill - len(generating)  # rows left for drafts
    if lockstep is not None and len(generating) > 1:
        share = 1 + most_drafts // len(generating)
        plans = lockstep.run([functools.partial(g.plan, rows_before, share) for g in generating])
        return [plan for plan in plans if plan is not None]
    plans = []
    for g in generating:
        plan = g.plan(rows_before, 1 + most_drafts)
        if plan is None:  # finished: its row is not in the batch
            rows_before -= 1
            continue
        plans.append(plan)
        rows_before += len(plan.draft)
        most_drafts -= len(plan.draft)
    return plans


def _record_round(plans: list[Plan], n_rows: int, seconds: float, cpu_seconds: float) -> None:
    """The measured time of a decode of n_rows rows, told once to each cost model the round's
    policies price with (auto mode's, shared by the generations of an engine), with whether the
    machine was busy meanwhile (this process's CPU time against the decode's wall time)."""
    costs = {id(c): c for p in plans if (c := getattr(p.generation.policy, "round_costs", None)) is not None}
    for cost_model in costs.values():
        cost_model.observe_target(n_rows, seconds, cost_model.meter.judge(seconds, cpu_seconds))
