"""Drafters propose the next tokens; the target decides which of them stand.

A drafter sees the token history (prompt + everything emitted so far) and returns a `Draft`:
up to k token ids and, for a model draft, the distribution q each one was drawn from (for
speculative sampling). An n-gram draft has no q: its tokens are point masses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from ..llama import Context, KVSequence, common_prefix_length
from ..shared_prefix import take_shared_prefix
from ..sampling import DraftChooser, greedy


# Where a round's drafts came from: Draft.source, the stats' round shapes, the server's metric
# labels. The cross-vocabulary drafter's is crossvocab.SOURCE ("xvocab").
MODEL_SOURCE = "model"  # a draft model of the target's vocabulary
NGRAM_SOURCE = "ngram"  # llama.cpp-style n-gram lookup over the text so far
SUFFIX_SOURCE = "suffix"  # auto's suffix index over the text so far
MEMORY_SOURCE = "memory"  # auto's suffix index over earlier outputs
NO_SOURCE = "none"  # a round that drafted nothing
LOOKUP_SOURCES = (NGRAM_SOURCE, SUFFIX_SOURCE, MEMORY_SOURCE)  # drafting that decodes nothing


@dataclass
class Draft:
    tokens: list[int] = field(default_factory=list)
    # q for each drafted token over the target's vocabulary; None for point-mass drafts.
    probs: list[np.ndarray] | None = None
    source: str = NO_SOURCE  # one of the sources above, or crossvocab.SOURCE
    # The draft model's probability of each drafted token (auto mode's acceptance signal).
    confidence: list[float] | None = None
    ngram_size: int = 0  # for n-gram drafts: the length of the match (n-gram size or more)

    def __len__(self) -> int:
        return len(self.tokens)

    def prefix(self, k: int) -> "Draft":
        return Draft(
            tokens=self.tokens[:k],
            probs=self.probs[:k] if self.probs is not None else None,
            source=self.source if k else NO_SOURCE,
            confidence=self.confidence[:k] if self.confidence is not None else None,
            ngram_size=self.ngram_size,
        )


NO_DRAFT = Draft()

# A teacher-forced decode asks for this many rows of logits at most: llama.cpp keeps a buffer of
# rows x vocabulary floats (128 x 152k is 78 MB), and larger batches are no faster per token.
LOGIT_ROWS_PER_DECODE = 128

# Called after each drafted token with (position in the draft, draft's probability of the
# token); returning False stops drafting. Auto mode uses it to stop when one more draft token
# is not worth its cost.
KeepDrafting = Callable[[int, float], bool]


class Drafter(Protocol):
    name: str

    def begin(self, prompt: Sequence[int]) -> None:
        """A new generation starts from `prompt` (lets a model drafter prefill its cache)."""

    def propose(
        self, history: Sequence[int], k: int, choose: DraftChooser, keep_drafting: KeepDrafting | None = None
    ) -> Draft:
        """Up to k tokens that might follow `history`."""


@dataclass(frozen=True)
class CatchUp:
    """History tokens a model drafter decoded before drafting (not drafts), and how long it took."""

    tokens: int = 0
    seconds: float = 0.0


def unseen_tokens(context: Context, tokens: Sequence[int]) -> int:
    """Tokens a drafter's cache must decode before drafting after `tokens`: all but the last one,
    past the prefix the cache already holds (the last is decoded for the first draft's logits)."""
    return max(len(tokens) - 1 - common_prefix_length(context.tokens, tokens[:-1]), 0)


def decode_catch_up(context: Context, missing: Sequence[int]) -> CatchUp:
    """Decode history tokens a drafter has not seen, timed apart from its drafts: after plain or
    lookup rounds that is a cost of switching to the drafter, not of drafting, and auto mode
    prices draft tokens without it."""
    start = time.perf_counter()
    if missing:
        context.decode(list(missing))
    return CatchUp(len(missing), time.perf_counter() - start)


class ModelDrafter:
    """A smaller model of the same vocabulary, on its own llama.cpp context.

    Its KV cache is kept in step with the target's history lazily: each round it keeps the
    longest prefix it shares with the history (dropping its rejected drafts) and decodes only
    the tokens it has not seen. It is never re-prefilled.
    """

    name = MODEL_SOURCE

    def __init__(self, context: Context, n_target_vocab: int, suppressed: Sequence[int] = ()):
        self.context = context
        # Draft ids the target does not have (a padded draft vocabulary) are never proposed;
        # q is reported over the target's ids.
        self.n_target_vocab = n_target_vocab
        self.n_shared = min(n_target_vocab, context.n_vocab)
        self.suppressed = np.asarray([t for t in suppressed if t < self.n_shared], dtype=np.int64)
        # The common case (same vocabulary, nothing masked) reads the logits in place.
        self._same_ids = n_target_vocab == context.n_vocab and not self.suppressed.size
        self.catch_up = CatchUp()  # the last propose's (auto mode prices drafting without it)
        self.shared_prompt_tokens = 0  # the last begin's prompt tokens taken from another slot

    def begin(self, prompt: Sequence[int]) -> None:
        self.shared_prompt_tokens = 0
        if len(prompt) < self.context.n_ctx:  # a longer prompt: this drafter sits the generation out
            self._sync(self._readable(prompt[:-1]), share=True)

    def _sync(self, tokens: Sequence[int], *, share: bool = False) -> CatchUp:
        ctx = self.context
        ctx.resync()  # an interrupted decode may have left the cache and its mirror apart
        ctx.truncate(common_prefix_length(ctx.tokens, tokens))
        if share and isinstance(ctx, KVSequence):
            # A prompt beginning that another slot's sequence holds (a server's system prompt)
            # is taken from its cells, not decoded (shared_prefix.py). Only at the start of a
            # generation, which runs between rounds: within a round the slots draft on lockstep
            # threads, each rolling its own sequence back.
            self.shared_prompt_tokens = take_shared_prefix(ctx, tokens)
        return decode_catch_up(ctx, tokens[ctx.n_past :])

    def unseen(self, history: Sequence[int]) -> int:
        """History tokens a propose would first have to catch up on (auto mode prices a look)."""
        if self.n_target_vocab > self.context.n_vocab:
            history = self._readable(history)
        return unseen_tokens(self.context, history)

    def propose(
        self, history: Sequence[int], k: int, choose: DraftChooser, keep_drafting: KeepDrafting | None = None
    ) -> Draft:
        ctx = self.context
        k = min(k, ctx.room - len(history) + ctx.n_past - 1)
        if k <= 0 or len(history) > ctx.n_ctx:
            return NO_DRAFT
        if self.n_target_vocab > ctx.n_vocab:
            history = self._readable(history)
        # Keep all but the last history token (catching up on what this drafter has not seen,
        # timed apart), then decode the last one to get the first draft's logits.
        self.catch_up = self._sync(history[:-1])
        logits = ctx.decode([history[-1]])[0]
        draft = Draft(source=MODEL_SOURCE, probs=[] if choose.kind == "rejection" else None, confidence=[])
        for i in range(k):
            # The confidence costs a pass over the vocabulary: only when someone listens.
            token, confidence, q = choose(i, self._restrict(logits), keep_drafting is not None)
            if q is not None:
                draft.probs.append(q)
            draft.tokens.append(token)
            draft.confidence.append(confidence)
            if ctx.model.vocab.is_eog(token) or i == k - 1:
                break
            if keep_drafting is not None and not keep_drafting(i, confidence):
                break
            logits = ctx.decode([token])[0]
        return draft

    def greedy_choices(self, prompt: Sequence[int], output: Sequence[int]) -> list[int]:
        """The token this drafter proposes at each position j of `output` when all of output[:j]
        was accepted, greedily: one teacher-forced pass over prompt + output, logits for the
        output's rows only (`specllm drafts`). A greedy draft continues only along accepted
        tokens, so these choices decide every greedy round (see replay.py)."""
        if not prompt or not output:
            return []
        ctx = self.context
        tokens = self._readable([*prompt, *output[:-1]])
        self._sync(tokens[: len(prompt) - 1])
        rows = tokens[len(prompt) - 1 :]  # row i predicts output[i]
        step = min(LOGIT_ROWS_PER_DECODE, ctx.n_batch)
        choices: list[int] = []
        for start in range(0, len(rows), step):
            logits = ctx.decode(rows[start : start + step], all_logits=True)
            choices.extend(greedy(self._restrict(row)) for row in logits)
        return choices

    def _readable(self, tokens: Sequence[int]) -> list[int]:
        """A padded target vocabulary can emit ids the draft lacks (practically never): the draft
        reads them as id 0. Its guesses after that are worse; verification keeps output exact."""
        n = self.context.n_vocab
        return [t if t < n else 0 for t in tokens]

    def _restrict(self, logits: np.ndarray) -> np.ndarray:
        """The draft's logits over the target's ids: drop ids the target lacks, pad ids only the target has."""
        if self._same_ids:
            return logits
        row = np.full(self.n_target_vocab, -np.inf, dtype=np.float32)
        row[: self.n_shared] = logits[: self.n_shared]
        if self.suppressed.size:
            row[self.suppressed] = -np.inf
        return row


class NgramDrafter:
    """Prompt lookup: find the latest earlier occurrence of the last n tokens, propose what followed.

    Pure function of the token history, no model. Sizes are tried longest first; a longer match
    is more likely to continue the same way. An index from n-gram to its latest position is
    extended incrementally, so a lookup costs O(1) rather than a scan of the history.
    """

    name = NGRAM_SOURCE

    def __init__(self, sizes: Sequence[int] = (4, 3, 2)):
        if not sizes or min(sizes) < 1:
            raise ValueError("n-gram sizes must be >= 1")
        self.sizes = sorted(set(sizes), reverse=True)
        self._history: list[int] = []
        # n -> {ngram: start index of its latest occurrence that has a continuation}
        self._latest: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}

    def begin(self, prompt: Sequence[int]) -> None:
        self._history = []
        self._latest = {n: {} for n in self.sizes}

    def _index(self, history: Sequence[int]) -> None:
        if history[: len(self._history)] != self._history:
            self.begin(history)
        start = len(self._history)
        # An n-gram ending at position j-1 (start j-n) can be looked up once token j exists,
        # i.e. once it has a continuation. The final n-gram is the query, not a candidate.
        for n, table in self._latest.items():
            for j in range(max(n, start), len(history)):
                table[tuple(history[j - n : j])] = j - n
        self._history = list(history)

    def lookup(self, history: Sequence[int], k: int) -> tuple[list[int], int]:
        """(proposed tokens, match length); ([], 0) when nothing matches.

        The match length is how far back the history agrees with the text before the match
        (at least the n-gram size, at most MAX_MATCH_LENGTH): a long match means the output is
        copying a passage, and copies tend to go on.
        """
        self._index(history)
        for n in self.sizes:
            if len(history) <= n:
                continue
            start = self._latest[n].get(tuple(history[-n:]))
            if start is not None:
                continuation = history[start + n : start + n + k]
                if continuation:
                    return list(continuation), n + _backward_match(history, start, len(history) - n)
        return [], 0

    def propose(
        self, history: Sequence[int], k: int, choose: DraftChooser, keep_drafting: KeepDrafting | None = None
    ) -> Draft:
        tokens, size = self.lookup(history, k)
        return Draft(tokens=tokens, source=NGRAM_SOURCE, ngram_size=size) if tokens else NO_DRAFT


MAX_MATCH_LENGTH = 32


def _backward_match(history: Sequence[int], a: int, b: int) -> int:
    """How many tokens before positions a and b (a < b) agree, up to MAX_MATCH_LENGTH - n."""
    length = 0
    while length < MAX_MATCH_LENGTH and a - length - 1 >= 0 and history[a - length - 1] == history[b - length - 1]:
        length += 1
    return length


class NoDrafter:
    """Plain decoding through the same loop: never drafts."""

    name = NO_SOURCE

    def begin(self, prompt: Sequence[int]) -> None:
        pass

    def propose(
        self, history: Sequence[int], k: int, choose: DraftChooser, keep_drafting: KeepDrafting | None = None
    ) -> Draft:
        return NO_DRAFT
