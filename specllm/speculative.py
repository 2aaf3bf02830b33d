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
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import numpy as np

from .drafting.base import NO_DRAFT, Draft, Drafter
from .errors import ContextFullError, DecodeError, PromptTooLongError
from .llama import Context, common_prefix_length
from .sampling import DraftChooser, Sampler
from .stats import SpecStats


@dataclass(frozen=True)
class TokenEvent:
    token: int
    piece: bytes  # token bytes; a multi-byte character may be split across events
    from_draft: bool


class DraftPolicy(Protocol):
    """Decides, each round, what to draft and how much."""

    mode: str
    k: int

    def begin(self, prompt: Sequence[int]) -> None: ...

    def draft(self, history: Sequence[int], max_k: int, choose: DraftChooser) -> Draft: ...

    def observe(self, draft: Draft, n_accepted: int, target_seconds: float) -> None: ...

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

    def end(self, output: Sequence[int]) -> None:
        pass


class Generation:
    """One generation. Iterate it for TokenEvents; then read tokens, finish_reason, stats.

    Interrupting the iteration (Ctrl-C, closing it) keeps what was emitted; the contexts are
    left consistent enough for the next generation, which re-syncs them by common prefix.
    """

    def __init__(
        self,
        target: Context,
        policy: DraftPolicy,
        prompt: Sequence[int],
        *,
        sampler: Sampler,
        max_tokens: int | None,
        ignore_eos: bool = False,
    ):
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) > target.n_ctx:
            raise PromptTooLongError(
                f"the prompt has {len(prompt)} tokens but the context holds {target.n_ctx}",
                hint="raise --ctx-size, or use --truncate to keep the end of the prompt",
            )
        self.target = target
        self.policy = policy
        self.prompt = list(prompt)
        self.sampler = sampler
        self.max_tokens = max_tokens
        self.vocab = target.model.vocab
        self.eog_ids = list(self.vocab.eog_ids) if ignore_eos else []
        self.history: list[int] = list(prompt)  # prompt + emitted; the target caches all but the last
        self.tokens: list[int] = []
        self.from_draft: list[bool] = []
        self.finish_reason: str | None = None
        self.end_token: int | None = None  # the end-of-generation token that stopped it, if one did
        self.stats = SpecStats(mode=policy.mode, k=policy.k, prompt_tokens=len(prompt))

    def __iter__(self) -> Iterator[TokenEvent]:
        self._prefill()
        start = time.perf_counter()
        try:
            while self.finish_reason is None:
                yield from self.step()
                self.stats.decode_seconds = time.perf_counter() - start
        except (KeyboardInterrupt, GeneratorExit):
            self.finish_reason = self.finish_reason or "interrupted"
            raise
        finally:
            self.stats.decode_seconds = time.perf_counter() - start
            self.policy.end(self.tokens)

    @property
    def seed(self) -> int:
        return self.sampler.seed

    def _prefill(self) -> None:
        start = time.perf_counter()
        self._sync_target()
        self.policy.begin(self.prompt)
        self.stats.prompt_seconds = time.perf_counter() - start

    def _sync_target(self) -> None:
        """Make the target's cache hold history[:-1], reusing the prefix it already holds (an
        earlier request's prompt, or this generation's own cache after anything disturbed it)."""
        self.target.resync()
        self.target.owner = self
        cached = common_prefix_length(self.target.tokens, self.history[:-1])
        self.target.truncate(cached)
        if len(self.history) > 1 + cached:
            self.target.decode(self.history[cached:-1])

    @property
    def remaining(self) -> int:
        return self.max_tokens - len(self.tokens) if self.max_tokens is not None else 1 << 30

    def step(self) -> list[TokenEvent]:
        """One round: draft, verify in one target decode, roll back, emit."""
        if self.remaining <= 0 or self.target.room < 1:
            self.finish_reason = "length"
            return []
        if self.target.owner is not self or not self.target.in_sync():
            self._sync_target()  # another generation used this context, or an interrupt hit a decode
        n_cached = self.target.n_past
        last = self.history[-1]
        # At most `remaining` tokens may be emitted: n accepted drafts + 1 of the target's.
        max_k = min(self.remaining - 1, self.target.room - 1)

        t0 = time.perf_counter()
        draft = self._draft(max_k)
        t1 = time.perf_counter()
        try:
            logits_tgt = self.target.decode([last, *draft.tokens], all_logits=True)
        except ContextFullError:
            self.finish_reason = "length"
            return []
        self._suppress_eog(logits_tgt)
        n_accepted, token_tgt = self.sampler.verify(logits_tgt, draft.tokens, draft.probs, len(self.tokens))
        self.target.truncate(n_cached + 1 + n_accepted)
        t2 = time.perf_counter()

        self.stats.draft_seconds += t1 - t0
        self.stats.target_seconds += t2 - t1
        self.policy.observe(draft, n_accepted, t2 - t1)
        emitted = [(t, True) for t in draft.tokens[:n_accepted]] + [(token_tgt, False)]
        return self._emit(emitted, draft, n_accepted)

    def _draft(self, max_k: int) -> Draft:
        if max_k <= 0:
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

    def _emit(self, emitted: list[tuple[int, bool]], draft: Draft, n_accepted: int) -> list[TokenEvent]:
        events = []
        for token, from_draft in emitted:
            if self.vocab.is_eog(token):
                # End of generation, drafted or not: nothing after it stands.
                self.finish_reason = "stop"
                self.end_token = token
                break
            self.history.append(token)
            self.tokens.append(token)
            self.from_draft.append(from_draft)
            events.append(TokenEvent(token, self.vocab.piece(token), from_draft))
        self.stats.record_round(draft.source, len(draft), n_accepted, len(events))
        if self.finish_reason is None and self.remaining <= 0:
            self.finish_reason = "length"
        return events
