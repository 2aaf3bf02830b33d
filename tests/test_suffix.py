"""Suffix index, matcher and drafter against a brute-force reference (pure Python, no models)."""

from __future__ import annotations

import math
import random
import time
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specllm.drafting.base import Draft
from specllm.drafting.suffix import (
    MAX_REACH,
    MIN_PROB,
    SuffixDraft,
    SuffixDrafter,
    SuffixIndex,
    SuffixMatcher,
    expected_accepted,
)
from specllm.drafting.memory import OutputMemory

# -- brute-force reference ---------------------------------------------------------------------


class Reference:
    """The same answers computed by scanning every document, for small texts."""

    def __init__(self, docs: list[list[int]], count_depth: int):
        self.docs = [list(d) for d in docs if d]
        self.depth = count_depth
        offsets, total = [], 0
        for d in self.docs:
            offsets.append(total)
            total += len(d)
        self.offsets = offsets

    def ends(self, ctx: tuple[int, ...]):
        """(document, end index, global position) of every occurrence of ctx."""
        m = len(ctx)
        for i, d in enumerate(self.docs):
            for e in range(m - 1, len(d)):
                if tuple(d[e - m + 1 : e + 1]) == ctx:
                    yield i, e, self.offsets[i] + e

    def occurs(self, ctx) -> bool:
        return next(self.ends(tuple(ctx)), None) is not None

    def continuations(self, ctx) -> dict[int, tuple[int, int]]:
        """token -> (count of ctx + token, latest global position of that token)."""
        out: dict[int, tuple[int, int]] = {}
        for i, e, pos in self.ends(tuple(ctx)):
            if e + 1 < len(self.docs[i]):
                t = self.docs[i][e + 1]
                c, r = out.get(t, (0, -1))
                out[t] = (c + 1, max(r, pos + 1))
        return out

    def walk(self, ctx, max_tokens, min_prob=0.0, max_reach=None) -> SuffixDraft:
        ctx = tuple(ctx)
        draft = SuffixDraft()
        running, limit = 1.0, max_tokens
        while len(draft.tokens) < limit:
            while ctx and not self.continuations(ctx):
                ctx = ctx[1:]
            if not ctx:
                break
            if not draft.tokens:
                draft.match_length = len(ctx)
                if max_reach is not None:
                    limit = min(limit, int(np.ceil(max_reach * len(ctx))))
            cont = self.continuations(ctx)
            if len(cont) == 1:
                token, prob = next(iter(cont)), 1.0
            else:
                cont = self.continuations(ctx[-(self.depth - 1) :])
                token = max(cont, key=lambda t: cont[t])  # count, then the most recent
                prob = cont[token][0] / sum(c for c, _ in cont.values())
            running *= prob
            if running < min_prob:
                break
            draft.tokens.append(token)
            draft.probs.append(prob)
            ctx = ctx + (token,)
            while not self.occurs(ctx):
                ctx = ctx[1:]
        return draft

    def longest_occurring_suffix(self, text) -> int:
        for m in range(len(text), 0, -1):
            if self.occurs(text[len(text) - m :]):
                return m
        return 0

    def own_match(self) -> int:
        """Longest suffix of the last document that occurs with a continuation."""
        text = self.docs[-1] if self.docs else []
        for m in range(len(text), 0, -1):
            if self.continuations(tuple(text[len(text) - m :])):
                return m
        return 0


def build(docs, count_depth, chunks=None) -> SuffixIndex:
    index = SuffixIndex(count_depth)
    for d in docs:
        index.end_document()
        index.extend(d)
    return index


def assert_same(got: SuffixDraft, want: SuffixDraft) -> None:
    assert got.tokens == want.tokens
    assert got.match_length == want.match_length
    assert got.probs == pytest.approx(want.probs)


def shortest_strings(index: SuffixIndex) -> dict[int, tuple[int, ...]]:
    """Each state's shortest string (breadth-first from the root)."""
    found = {0: ()}
    queue = deque([0])
    while queue:
        s = queue.popleft()
        for t, child in sorted(index._next[s].items()):
            if child not in found:
                found[child] = found[s] + (t,)
                queue.append(child)
    return found


texts = st.lists(st.integers(0, 2), max_size=60)
documents = st.lists(st.lists(st.integers(0, 3), max_size=30), min_size=1, max_size=4)
depths = st.sampled_from([2, 3, 5, 64])

# -- the index ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(text=texts, cuts=st.lists(st.integers(1, 8), max_size=20), alphabet=st.integers(1, 3))
def test_longest_own_match_grows_with_the_text(text, cuts, alphabet):
    text = [t % alphabet for t in text]
    index, done = SuffixIndex(), 0
    for cut in cuts + [len(text)]:
        index.extend(text[done : done + cut])
        done = min(len(text), done + cut)
        ref = Reference([text[:done]], 64)
        assert index.draft(1).match_length == ref.own_match()
        assert len(index) == done


@settings(max_examples=60, deadline=None)
@given(docs=documents, depth=depths)
def test_counts_are_exact_for_counted_states(docs, depth):
    index = build(docs, depth)
    ref = Reference(docs, depth)
    shortest = shortest_strings(index)
    assert len(shortest) == index.n_states  # every state is reachable
    for state, string in shortest.items():
        if state == 0:
            continue
        assert len(string) == index._len[index._link[state]] + 1  # the shortest string is minlen
        if len(string) <= depth:
            ends = list(ref.ends(string))
            assert index._count[state] == len(ends)
            assert index._recent[state] == max(pos for _, _, pos in ends)


@settings(max_examples=80, deadline=None)
@given(
    docs=documents,
    depth=depths,
    max_tokens=st.integers(1, 25),
    min_prob=st.sampled_from([0.0, 0.2, 0.5]),
    reach=st.sampled_from([None, 0.5, 2.0]),
)
def test_own_draft_matches_reference(docs, depth, max_tokens, min_prob, reach):
    index = build(docs, depth)
    ref = Reference(docs, depth)
    own = docs[-1]
    want = ref.walk(own, max_tokens, min_prob, reach) if own else SuffixDraft()
    assert_same(index.draft(max_tokens, min_prob, reach), want)


def test_periodic_text_drafts_far_beyond_its_end():
    period = [11, 12, 13, 14, 15, 16, 17]
    index = SuffixIndex()
    index.extend([1, 2, 3] + period * 3)
    draft = index.draft(100)
    assert draft.tokens == (period * 20)[:100]
    assert draft.probs == [1.0] * 100
    assert draft.match_length == 2 * len(period)


def test_greedy_repetition_loop_drafts_the_whole_budget():
    # A model stuck in a loop of 12 tokens after a random prompt: every round should draft k.
    rng = random.Random(0)
    prompt = [rng.randrange(152_000) for _ in range(300)]
    loop = [rng.randrange(152_000) for _ in range(12)]
    history = prompt + loop * 2
    index = SuffixIndex()
    index.extend(history)
    for _ in range(40):
        phase = (len(history) - len(prompt)) % len(loop)
        draft = index.draft(16, MIN_PROB, MAX_REACH)
        assert draft.tokens == (loop * 3)[phase : phase + 16]
        accepted = draft.tokens[:5]  # the target accepts a few, the loop goes on
        index.extend(accepted)
        history += accepted


def test_most_frequent_continuation_and_its_probability():
    index = SuffixIndex()
    index.extend([1, 2, 7, 30, 1, 2, 7, 31, 1, 2, 8, 32, 1, 2, 7, 33, 1, 2])
    draft = index.draft(1)
    assert draft.tokens == [7] and draft.probs == [pytest.approx(3 / 4)]
    assert draft.match_length == 2  # "1 2"


def test_ties_go_to_the_most_recent_continuation():
    index = SuffixIndex()
    index.extend([5, 1, 9, 5, 2, 9, 5, 3, 9, 5])
    assert index.draft(1).tokens == [3]
    assert index.draft(1).probs == [pytest.approx(1 / 2)]  # after "9 5": 2 or 3


def test_min_prob_stops_on_the_running_product():
    # After "1": 2 (3 of 4), then after "1 2": 3 (2 of 3), so the running products are .75, .5.
    index = SuffixIndex()
    index.extend([1, 2, 3, 30, 1, 2, 3, 31, 1, 2, 4, 32, 1, 5, 33, 1])
    assert index.draft(5, min_prob=0.0).tokens[:2] == [2, 3]
    assert index.draft(5, min_prob=0.0).probs[:2] == [pytest.approx(0.75), pytest.approx(2 / 3)]
    assert index.draft(5, min_prob=0.6).tokens == [2]
    assert index.draft(5, min_prob=0.8).tokens == []


def test_max_reach_bounds_the_draft_by_the_match_length():
    index = SuffixIndex()
    index.extend([1, 2, 3, 4, 5, 6, 7, 8, 0, 3])
    assert index.draft(10).match_length == 1
    assert index.draft(10, max_reach=2.0).tokens == [4, 5]
    assert len(index.draft(10)) == 10  # unbounded: falls back and goes on


def test_matches_never_span_documents():
    index = SuffixIndex()
    index.extend([1, 2, 3])
    index.end_document()
    index.extend([4, 5])
    index.end_document()
    index.extend([3])
    # "3" occurs only at the end of a document: nothing followed it.
    assert index.draft(5) == SuffixDraft()
    matcher = SuffixMatcher(index)
    matcher.feed([2, 3, 4])
    assert matcher.match_length == 1  # "4", not "3 4"
    assert matcher.draft(5).tokens == [5]
    assert index.n_documents == 3 and len(index) == 6


def test_empty_and_unknown():
    index = SuffixIndex()
    assert index.draft(4) == SuffixDraft()
    index.extend([1])
    assert index.draft(4) == SuffixDraft()
    matcher = SuffixMatcher(index)
    matcher.feed([9, 9])
    assert matcher.match_length == 0 and matcher.draft(3) == SuffixDraft()
    with pytest.raises(ValueError):
        SuffixIndex(count_depth=1)


# -- the matcher -------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    docs=documents,
    fed=st.lists(st.integers(0, 3), max_size=40),
    cuts=st.lists(st.integers(1, 6), max_size=10),
    depth=depths,
    min_prob=st.sampled_from([0.0, 0.3]),
)
def test_matcher_matches_reference(docs, fed, cuts, depth, min_prob):
    index = build(docs, depth)
    ref = Reference(docs, depth)
    matcher, done = SuffixMatcher(index), 0
    for cut in cuts + [len(fed)]:
        matcher.feed(fed[done : done + cut])
        done = min(len(fed), done + cut)
        m = ref.longest_occurring_suffix(fed[:done])
        assert matcher.match_length == m
        want = ref.walk(fed[done - m : done], 12, min_prob) if m else SuffixDraft()
        assert_same(matcher.draft(12, min_prob), want)


@settings(max_examples=60, deadline=None)
@given(first=documents, later=documents, fed=st.lists(st.integers(0, 3), min_size=1, max_size=30))
def test_matcher_follows_a_growing_index(first, later, fed):
    index = build(first, 4)
    matcher = SuffixMatcher(index)
    matcher.feed(fed)
    m = matcher.match_length
    for i, d in enumerate(later):  # documents added meanwhile split states the matcher may sit on
        index.end_document()
        index.extend(d)
        ref = Reference(first + later[: i + 1], 4)
        assert matcher.match_length == m  # the same context, drafted from the grown index
        assert_same(matcher.draft(10), ref.walk(fed[len(fed) - m :], 10))
    matcher.feed([fed[-1]])
    ref = Reference(first + later, 4)
    assert matcher.match_length <= ref.longest_occurring_suffix(fed + [fed[-1]])


def test_matcher_rematches_after_the_index_is_cleared():
    index = SuffixIndex()
    index.extend([1, 2, 3, 4])
    matcher = SuffixMatcher(index)
    matcher.feed([7, 2, 3])
    assert matcher.match_length == 2
    index.clear()
    index.extend([9, 3, 5])
    assert matcher.draft(3).tokens == [5]
    assert matcher.match_length == 1


# -- the drafter -------------------------------------------------------------------------------


def test_drafter_follows_history_and_rebuilds_on_another_text():
    drafter = SuffixDrafter()
    loop = [21, 22, 23, 24]
    history = [1, 2, 3] + loop * 2
    drafter.begin(history[:3])
    draft = drafter.propose(history, 6, np.random.default_rng(0))
    assert isinstance(draft, Draft)
    assert draft.tokens == [21, 22, 23, 24, 21, 22] and draft.source == "suffix"
    assert draft.probs is None and draft.confidence == [1.0] * 6 and draft.ngram_size == 4
    indexed = drafter.index.n_tokens
    history += [21, 22]
    drafter.propose(history, 4, None)
    assert drafter.index.n_tokens == indexed + 2  # only the new tokens were indexed
    rebuilt = drafter.propose([5, 6, 5], 4, None).tokens  # another text: rebuilt
    assert rebuilt == [6, 5, 6, 5][: math.ceil(MAX_REACH * 1)]
    assert drafter.index.n_tokens == 3
    assert drafter.propose([5, 6, 5], 0, None) == Draft()


def test_drafter_takes_numpy_histories():
    drafter = SuffixDrafter()
    history = np.array([3, 4, 5, 3, 4], dtype=np.int32)
    drafter.begin(history[:2])
    draft = drafter.propose(history, 3, None)
    assert draft.tokens == [5, 3, 4] and all(type(t) is int for t in draft.tokens)
    assert draft.prefix(1).tokens == [5] and draft.prefix(1).confidence == [1.0]


def test_drafter_reach_min_prob_and_keep_drafting():
    drafter = SuffixDrafter(max_reach=1.0)
    history = [1, 2, 3, 4, 5, 6, 9, 1, 2]
    drafter.begin(history)
    assert drafter.propose(history, 10, None).tokens == [3, 4]
    seen = []

    def keep(i, p):
        seen.append((i, p))
        return i < 0

    drafter = SuffixDrafter()
    assert drafter.propose(history, 10, None, keep).tokens == [3]
    assert seen == [(0, 1.0)]
    strict = SuffixDrafter(min_prob=0.9)
    branchy = [1, 2, 7, 1, 3, 8, 1]  # after "1": 2 or 3
    assert strict.propose(branchy, 5, None) == Draft()
    assert SuffixDrafter(min_prob=0.4).propose(branchy, 5, None).tokens[:1] == [3]


def test_drafter_from_memory():
    memory = OutputMemory(max_tokens=1000)
    memory.add([40, 41, 42, 43, 44, 45])
    memory.add([50, 51, 52])
    drafter = SuffixDrafter(memory)
    history = [7, 8, 41, 42]
    drafter.begin(history[:2])
    own = drafter.propose(history, 4, None)
    recalled = drafter.propose_from_memory(history, 4)
    assert own == Draft()
    assert recalled.tokens == [43, 44, 45] and recalled.ngram_size == 2
    assert expected_accepted(recalled.confidence) == pytest.approx(3.0)
    history += [43]
    assert drafter.propose_from_memory(history, 4).tokens == [44, 45]
    assert SuffixDrafter().propose_from_memory(history, 4) == Draft()


def test_expected_accepted():
    assert expected_accepted([]) == 0.0
    assert expected_accepted([1.0, 0.5, 0.5]) == pytest.approx(1 + 0.5 + 0.25)
    assert SuffixDraft([1, 2], [0.5, 0.5], 3).expected_accepted == pytest.approx(0.75)


# -- cost (printed, not asserted) ----------------------------------------------------------------


def test_cost_per_token_and_per_draft():
    rng = np.random.default_rng(0)
    # Token ids with a natural-text-like skew (Zipf), and one run of pure repetition.
    zipf = [int(t) % 152_000 for t in rng.zipf(1.2, size=4000)]
    loop = [int(t) for t in rng.integers(0, 152_000, size=20)] * 200
    for name, tokens in (("zipf", zipf), ("uniform", [int(t) for t in rng.integers(0, 152_000, 4000)]), ("loop", loop)):
        index = SuffixIndex()
        extend_seconds = draft_seconds = 0.0
        n_drafts = drafted = 0
        for i in range(0, len(tokens), 4):  # rounds of a few accepted tokens, a draft each
            start = time.perf_counter()
            index.extend(tokens[i : i + 4])
            middle = time.perf_counter()
            drafted += len(index.draft(16, MIN_PROB, MAX_REACH))
            extend_seconds += middle - start
            draft_seconds += time.perf_counter() - middle
            n_drafts += 1
        print(
            f"\n{name}: {len(tokens)} tokens, {index.n_states} states; "
            f"{extend_seconds / len(tokens) * 1e6:.1f} us per appended token, "
            f"{draft_seconds / n_drafts * 1e6:.1f} us per draft ({drafted / n_drafts:.1f} tokens per draft)"
        )
