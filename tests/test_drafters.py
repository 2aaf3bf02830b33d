"""The n-gram drafter is a pure function of the token history."""

import numpy as np

from specllm.drafting.base import NgramDrafter

RNG = np.random.default_rng(0)


def test_proposes_what_followed_the_latest_match():
    d = NgramDrafter(sizes=(2,))
    history = [1, 2, 3, 4, 9, 1, 2, 7, 8, 1, 2]
    assert d.propose(history, 3, RNG).tokens == [7, 8, 1]


def test_longer_ngrams_win_over_shorter_ones():
    d = NgramDrafter(sizes=(3, 1))
    # [5, 6, 7] occurred once, followed by 40; the unigram 7 last occurred before 50.
    history = [5, 6, 7, 40, 41, 7, 50, 5, 6, 7]
    draft = d.propose(history, 2, RNG)
    assert draft.tokens == [40, 41] and draft.ngram_size == 3


def test_no_match_no_draft():
    d = NgramDrafter(sizes=(2,))
    assert d.propose([1, 2, 3, 4], 4, RNG).tokens == []


def test_continuation_is_cut_at_k_and_at_the_end_of_history():
    d = NgramDrafter(sizes=(1,))
    assert d.propose([3, 8, 3], 5, RNG).tokens == [8, 3]
    assert d.propose([3, 8, 3], 1, RNG).tokens == [8]


def test_index_grows_incrementally_and_resets_on_a_new_history():
    d = NgramDrafter(sizes=(2,))
    history = [1, 2, 3]
    assert d.propose(history, 2, RNG).tokens == []
    history += [1, 2]
    assert d.propose(history, 2, RNG).tokens == [3, 1]
    # A different history (new prompt) must not reuse the old index.
    assert d.propose([9, 9, 1, 2], 2, RNG).tokens == []


def test_index_matches_a_brute_force_search():
    rng = np.random.default_rng(3)
    history = list(rng.integers(0, 6, size=300))
    d = NgramDrafter(sizes=(3, 2))
    for end in range(4, 300, 7):
        h = [int(t) for t in history[:end]]
        expected = []
        for n in (3, 2):
            q = h[-n:]
            starts = [s for s in range(len(h) - n) if h[s : s + n] == q]
            if starts:
                expected = h[starts[-1] + n : starts[-1] + n + 4]
                break
        assert d.propose(h, 4, None).tokens == expected


def test_a_model_drafter_reports_the_history_it_caught_up_on_apart_from_its_drafts(tiny):
    # Auto mode prices a draft token without this catch-up (a switching cost): after ten tokens
    # of plain rounds the first propose decodes those ten, a propose right after only its own.
    from specllm.drafting.base import ModelDrafter
    from specllm.llama import Context, Model
    from specllm.sampling import DraftChooser, Sampler, SamplingParams

    choose = DraftChooser(Sampler(SamplingParams()), 0)
    model = Model(tiny.draft_copy)
    with Context(model, n_ctx=128, n_threads=1) as ctx:
        drafter = ModelDrafter(ctx, model.vocab.n_tokens)
        history = model.vocab.tokenize("def return import from class self if else")
        drafter.begin(history[:2])
        assert drafter.catch_up.tokens == 0
        draft = drafter.propose(history, 3, choose)
        assert drafter.catch_up.tokens == len(history) - 2 and drafter.catch_up.seconds > 0
        # The drafts were all accepted plus one token of the target's: only the last draft is new.
        drafter.propose(history + draft.tokens + [draft.tokens[0]], 3, choose)
        assert drafter.catch_up.tokens == 1
    model.close()
