"""Suffix drafting: the longest earlier match of the text's end, and its most frequent continuation.

`SuffixIndex` indexes a growing token sequence made of documents (one per text; matches never
span two), `SuffixMatcher` follows another text against it, `SuffixDrafter` is the drafter
over a generation's own history (prompt + output) and, optionally, over an `OutputMemory`
of earlier outputs (SuffixDecoding, Oliaro et al. 2024, with a suffix automaton instead of a
depth-bounded suffix tree).

Design and cost:
- A generalized suffix automaton (one state per set of end positions, a suffix link to the
  state of the next shorter suffixes, a dict of transitions per state). Appending a token is
  amortized O(1) and the automaton has at most 2n states and 3n transitions: memory O(n).
  The longest match is unbounded.
- Occurrence counts. A state's count (how many times its strings occur) changes for every
  state on the suffix-link path of the text's end at each appended token: O(n) per token
  for exact counts everywhere. Counts are kept exact only for states whose shortest string
  has at most `count_depth` (D) tokens: they are the states on the path from the one holding
  the text's last D tokens (tracked in O(1): a transition and at most one suffix link) to
  the root, at most D of them, and one to three for natural text. So appending costs O(D)
  in the worst case (a run of one token), about O(1) in practice.
- Drafting from a context (the matched suffix): if every earlier occurrence continued with
  the same token, that token, probability 1 (exact at any length). Otherwise the children
  of the context's last D-1 tokens are compared (their counts are exact; for contexts of
  up to D-1 tokens this is the context itself): the most frequent, ties to the most recent,
  with probability count(context + t) / count(context followed by any token). A draft step
  costs O(number of distinct continuations).
- When a context has no continuation (the draft ran into the end of a document, e.g. the
  end of a periodic text), the draft falls back along the suffix link to the longest
  shorter context that has one: a text with period P drafts as far as asked.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from .base import MEMORY_SOURCE, NO_DRAFT, SUFFIX_SOURCE, Draft, KeepDrafting

if TYPE_CHECKING:
    from .memory import OutputMemory

# Contexts whose shortest distinguishing suffix has at most this many tokens keep exact counts;
# 64 tokens is longer than any phrase that recurs with different continuations in practice.
COUNT_DEPTH = 64
# A draft stops when the product of its count-based probabilities falls below this
# (SuffixDecoding's default min_token_prob): a less likely tail costs more than it wins.
MIN_PROB = 0.1
# A match of m tokens drafts at most MAX_REACH * m tokens: short matches predict short copies
# (SuffixDecoding's max_spec_factor). Generous, because auto mode cuts each draft to the length
# its learned acceptance pays for (a copy confirmed for 12 tokens often goes on for 48 more,
# as llama.cpp's ngram-mod bets); fixed modes draft what they get.
MAX_REACH = 4.0
# A matcher re-matches at most this many of its last fed tokens after its index is rebuilt.
REFEED_WINDOW = 1024
# History counts as an extension of what was indexed when these last indexed tokens agree
# (checking all of it would copy the history each round; a wrong guess only costs drafts).
SYNC_CHECK = 16


@dataclass
class SuffixDraft:
    tokens: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)  # count-based P(token | context + tokens before)
    match_length: int = 0  # length of the context the first token was drafted from

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def expected_accepted(self) -> float:
        """Expected number of accepted tokens if the counts were the target's probabilities."""
        return expected_accepted(self.probs)


def expected_accepted(probs: Sequence[float]) -> float:
    """Sum over i of prod_{j<=i} probs[j]: the expected length of the accepted prefix."""
    total, survive = 0.0, 1.0
    for p in probs:
        survive *= p
        total += survive
    return total


class SuffixIndex:
    """Suffix automaton over documents of token ids, with continuation counts.

    `extend` appends to the current (last) document, `end_document` starts a new one.
    `draft` drafts from the end of the current document (the "own text" mode).
    """

    def __init__(self, count_depth: int = COUNT_DEPTH):
        if count_depth < 2:
            raise ValueError("count_depth must be >= 2")
        self.count_depth = count_depth
        self.generation = 0  # bumped by clear(): state ids of matchers become meaningless
        self._init()

    def _init(self) -> None:
        # State 0 is the root (the empty string). Per state: length of its longest string,
        # suffix link, transitions, occurrence count and the latest end position (both exact
        # only for counted states, see the module docstring).
        self._len: list[int] = [0]
        self._link: list[int] = [-1]
        self._next: list[dict[int, int]] = [{}]
        self._count: list[int] = [0]
        self._recent: list[int] = [-1]
        self._last = 0  # state of the whole current document
        self._tail = 0  # state holding the current document's last min(count_depth, length) tokens
        self.document_length = 0  # tokens in the current document
        self.n_tokens = 0  # tokens in all documents
        self.n_documents = 0  # documents with at least one token

    def __len__(self) -> int:
        return self.n_tokens

    @property
    def n_states(self) -> int:
        return len(self._len)

    def clear(self) -> None:
        self._init()
        self.generation += 1

    def end_document(self) -> None:
        """Later tokens start a new document; no match runs from one into the other."""
        self._last = self._tail = 0
        self.document_length = 0

    def extend(self, tokens: Iterable[int]) -> None:
        length, link, nxt, count, recent = self._len, self._link, self._next, self._count, self._recent
        depth = self.count_depth
        for token in tokens:
            token = int(token)
            if self.document_length == 0:
                self.n_documents += 1
            self._last = last = self._insert(token)
            self.document_length += 1
            if self.document_length <= depth:
                tail = last
            else:
                # The previous tail holds suffixes of >= depth tokens (if a clone made by this
                # insert took the shorter ones, still longer ones); the token leads from them to
                # suffixes of > depth tokens, and a link up (at most one) to the last depth tokens.
                tail = nxt[self._tail][token]
                while length[link[tail]] >= depth:
                    tail = link[tail]
            self._tail = tail
            position = self.n_tokens
            while tail > 0:  # the counted states that gain this end position
                count[tail] += 1
                recent[tail] = position
                tail = link[tail]
            self.n_tokens += 1

    def _new_state(self, length: int, link: int, nxt: dict[int, int], count: int, recent: int) -> int:
        self._len.append(length)
        self._link.append(link)
        self._next.append(nxt)
        self._count.append(count)
        self._recent.append(recent)
        return len(self._len) - 1

    def _insert(self, token: int) -> int:
        """Extend the automaton by one token of the current document; the state of the document."""
        length, link, nxt = self._len, self._link, self._next
        p = self._last
        q = nxt[p].get(token)
        if q is not None:  # the document so far already occurs (generalized automaton)
            return q if length[p] + 1 == length[q] else self._clone(p, q, token)
        cur = self._new_state(length[p] + 1, 0, {}, 0, -1)
        while p != -1 and token not in nxt[p]:
            nxt[p][token] = cur
            p = link[p]
        if p != -1:
            q = nxt[p][token]
            link[cur] = q if length[p] + 1 == length[q] else self._clone(p, q, token)
        return cur

    def _clone(self, p: int, q: int, token: int) -> int:
        length, link, nxt = self._len, self._link, self._next
        clone = self._new_state(length[p] + 1, link[q], dict(nxt[q]), self._count[q], self._recent[q])
        link[q] = clone
        while p != -1 and nxt[p].get(token) == q:
            nxt[p][token] = clone
            p = link[p]
        return clone

    # -- drafting ---------------------------------------------------------------------------

    def draft(self, max_tokens: int, min_prob: float = 0.0, max_reach: float | None = None) -> SuffixDraft:
        """Draft from the end of the current document: its longest suffix that occurs earlier
        with a continuation, then the most frequent continuations (see `walk`)."""
        return self.walk(self._last, self.document_length, max_tokens, min_prob, max_reach)

    def walk(
        self, state: int, context: int, max_tokens: int, min_prob: float = 0.0, max_reach: float | None = None
    ) -> SuffixDraft:
        """Draft from the context of `context` tokens held by `state`.

        Each step takes the most frequent continuation of the context, falling back to the
        longest shorter context that has one. Stops at `max_tokens`, at max_reach x the match
        length, or before the running product of probabilities would fall below `min_prob`.
        """
        length, link, nxt = self._len, self._link, self._next
        draft = SuffixDraft()
        running = 1.0
        limit = max_tokens
        while len(draft.tokens) < limit:
            while state > 0 and not nxt[state]:  # no continuation: a shorter context
                state = link[state]
                context = length[state]
            if state <= 0:
                break
            if not draft.tokens:
                draft.match_length = context
                if max_reach is not None:
                    limit = min(limit, math.ceil(max_reach * context))
            token, prob = self._continuation(state)
            running *= prob
            if running < min_prob:
                break
            draft.tokens.append(token)
            draft.probs.append(prob)
            # The new context: the longest suffix of context + token that occurs.
            while token not in nxt[state]:
                state = link[state]
                context = length[state]
            state = nxt[state][token]
            context += 1
        return draft

    def _continuation(self, state: int) -> tuple[int, float]:
        """(most frequent next token, its conditional probability) after the context in `state`."""
        edges = self._next[state]
        if len(edges) == 1:
            return next(iter(edges)), 1.0
        # Go up to the state of the context's last depth-1 tokens: its children are counted.
        length, link = self._len, self._link
        shallow = self.count_depth - 1
        while length[link[state]] >= shallow:
            state = link[state]
        count, recent = self._count, self._recent
        best, best_count, best_recent, total = -1, 0, -1, 0
        for token, child in self._next[state].items():
            c = count[child]
            total += c
            if c > best_count or (c == best_count and recent[child] > best_recent):
                best, best_count, best_recent = token, c, recent[child]
        return best, best_count / total


class SuffixMatcher:
    """The longest suffix of a text fed token by token that occurs in an index.

    Amortized O(1) per fed token. The index may grow meanwhile (states it splits are
    followed up lazily); after it is cleared the matcher re-matches its last fed tokens.
    """

    def __init__(self, index: SuffixIndex):
        self.index = index
        self.reset()

    def reset(self) -> None:
        self._state = 0
        self.match_length = 0  # tokens of the fed text's end that occur in the index
        self._generation = self.index.generation
        self._seen = self.index.n_states
        self._recent_fed: deque[int] = deque(maxlen=REFEED_WINDOW)

    def feed(self, tokens: Iterable[int]) -> None:
        self._follow_index()
        length, link, nxt = self.index._len, self.index._link, self.index._next
        state, matched = self._state, self.match_length
        recent_fed = self._recent_fed
        for token in tokens:
            token = int(token)
            recent_fed.append(token)
            while state > 0 and token not in nxt[state]:
                state = link[state]
                matched = length[state]
            target = nxt[state].get(token)
            if target is None:
                state, matched = 0, 0
            else:
                state, matched = target, matched + 1
        self._state, self.match_length = state, matched

    def draft(self, max_tokens: int, min_prob: float = 0.0, max_reach: float | None = None) -> SuffixDraft:
        self._follow_index()
        return self.index.walk(self._state, self.match_length, max_tokens, min_prob, max_reach)

    def _follow_index(self) -> None:
        index = self.index
        if self._generation != index.generation:
            fed = list(self._recent_fed)
            self.reset()
            self.feed(fed)
        elif self._seen != index.n_states:
            # A clone may now hold the shorter strings of our state, ours among them.
            length, link = index._len, index._link
            while self._state > 0 and length[link[self._state]] >= self.match_length:
                self._state = link[self._state]
            self._seen = index.n_states


class SuffixDrafter:
    """Drafter over a generation's own history and, optionally, earlier outputs.

    `propose` drafts from the history itself; `propose_from_memory` from the memory of earlier
    outputs, so that a policy can take whichever promises more accepted tokens
    (`expected_accepted(draft.confidence)`). Drafts are point masses: `Draft.probs` is None and
    `Draft.confidence` holds the count-based probabilities.
    """

    name = SUFFIX_SOURCE

    def __init__(
        self,
        memory: "OutputMemory | None" = None,
        *,
        min_prob: float = MIN_PROB,
        max_reach: float = MAX_REACH,
        count_depth: int = COUNT_DEPTH,
    ):
        self.min_prob = min_prob
        self.max_reach = max_reach
        self.index = SuffixIndex(count_depth)
        self.memory = memory
        self._matcher = memory.matcher() if memory is not None else None
        self._tail: list[int] = []  # the last SYNC_CHECK indexed tokens

    def begin(self, prompt: Sequence[int]) -> None:
        self._clear()
        self._sync(prompt)

    def _clear(self) -> None:
        self.index.clear()
        self._tail = []
        if self._matcher is not None:
            self._matcher.reset()

    def _sync(self, history: Sequence[int]) -> None:
        """Index the tokens of `history` not indexed yet; start over if it is another text."""
        n = self.index.n_tokens
        if len(history) < n or list(history[max(0, n - SYNC_CHECK) : n]) != self._tail:
            self._clear()
            n = 0
        new = history[n:]
        if len(new):
            self.index.extend(new)
            if self._matcher is not None:
                self._matcher.feed(new)
            self._tail = list(history[max(0, len(history) - SYNC_CHECK) :])

    def propose(
        self, history: Sequence[int], k: int, rng: np.random.Generator | None = None,
        keep_drafting: KeepDrafting | None = None,
    ) -> Draft:
        """Up to k tokens continuing `history` as it continued earlier in `history`."""
        if k <= 0:
            return NO_DRAFT
        self._sync(history)
        return _as_draft(self.index.draft(k, self.min_prob, self.max_reach), keep_drafting)

    def propose_from_memory(
        self, history: Sequence[int], k: int, keep_drafting: KeepDrafting | None = None
    ) -> Draft:
        """Up to k tokens continuing `history` as earlier outputs continued the same text."""
        if k <= 0 or self._matcher is None:
            return NO_DRAFT
        self._sync(history)
        return _as_draft(self._matcher.draft(k, self.min_prob, self.max_reach), keep_drafting)


def _as_draft(suffix_draft: SuffixDraft, keep_drafting: KeepDrafting | None) -> Draft:
    tokens, probs = suffix_draft.tokens, suffix_draft.probs
    if keep_drafting is not None:
        for i, p in enumerate(probs):
            if not keep_drafting(i, p):
                tokens, probs = tokens[: i + 1], probs[: i + 1]
                break
    if not tokens:
        return NO_DRAFT
    return Draft(tokens=tokens, source=SUFFIX_SOURCE, confidence=probs, ngram_size=suffix_draft.match_length)


class MemoryDrafter:
    """The memory half of a `SuffixDrafter` as a drafter of its own (source "memory"), so that
    auto mode learns its acceptance apart from the own-text drafts and picks the better one."""

    name = MEMORY_SOURCE

    def __init__(self, suffix: SuffixDrafter):
        self.suffix = suffix

    def begin(self, prompt: Sequence[int]) -> None:
        pass  # the SuffixDrafter's begin resets the shared matcher

    def propose(self, history: Sequence[int], k: int, choose=None, keep_drafting: KeepDrafting | None = None) -> Draft:
        draft = self.suffix.propose_from_memory(history, k, keep_drafting)
        if draft.tokens:
            draft.source = self.name
        return draft


def lookup_drafters(memory: "OutputMemory | None" = None) -> list:
    """Auto mode's free drafters: the suffix index over the text so far, and over `memory`."""
    suffix = SuffixDrafter(memory)
    return [suffix, MemoryDrafter(suffix)]
