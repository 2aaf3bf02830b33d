"""Fixed-k speculative rounds replayed over a recorded greedy output, without the target.

At temperature 0 the output of `generate --mode draft -k K` is the target's own greedy output
y, whatever was drafted (that is what lossless means). So once y is known, a round is decided by
its drafts alone: a round that starts at output position n with drafts d1..dj accepts the
longest prefix of d equal to y[n:], then emits the target's own token y[n + accepted]. This
module plays those rounds exactly as speculative.py does:

- a round drafts at most min(k, remaining - 1) tokens (remaining = max_tokens - n), and a
  round that may draft nothing decodes plainly;
- emitted tokens stop at the first end-of-generation token, which is not emitted; an accepted
  drafted EOG counts as accepted, as `SpecStats.record_round` counts it in a real run;
- the rounds are recorded in a `SpecStats` through `record_round`, so tokens per round,
  per-position acceptance and the round shapes a cost model prices are those of a real run.

`specllm drafts` (drafting/selection.py) and tune-draft's acceptance report (tune/agreement.py)
both count their rounds here. Every k is played at once, position by position: the drafter is asked only at the positions
some k visits, once for all the lengths wanted there (a drafter of another vocabulary drafts
them all in one pass), and always with a growing history, as in a real run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

from ..stats import SpecStats
from .base import MODEL_SOURCE, NO_SOURCE


@dataclass(frozen=True)
class Proposal:
    """A drafter's tokens at one position, and the draft-model decodes they took."""

    tokens: tuple[int, ...] = ()
    source: str = NO_SOURCE
    draft_decodes: int = 0


NOTHING = Proposal()

# (output position n, the draft lengths wanted there) -> {length: proposal}; a length left out
# drafts nothing.
ProposeAt = Callable[[int, Sequence[int]], Mapping[int, Proposal]]


@dataclass
class RecordedOutput:
    """A target's greedy output for one prompt, as a plain run produced it."""

    prompt: list[int]
    tokens: list[int]  # what was emitted
    end_token: Optional[int]  # the end-of-generation token that stopped it; None: it ran out of tokens
    max_tokens: int  # the budget it ran with

    @property
    def sequence(self) -> list[int]:
        """Every token the target chose, the final EOG included."""
        return self.tokens + ([self.end_token] if self.end_token is not None else [])

    @property
    def budget(self) -> int:
        # A run that stopped for lack of room before max_tokens (a prompt near the context's
        # size): its length is the budget a replay can know of.
        return self.max_tokens if self.end_token is not None else len(self.tokens)


@dataclass
class ReplayedRounds:
    """What fixed-k rounds would do, pooled over prompts."""

    k: int
    stats: SpecStats
    draft_decodes: int = 0  # the draft-model decodes its proposals took


def replay_fixed_k(
    output: RecordedOutput,
    ks: Sequence[int],
    propose_at: ProposeAt,
    is_eog: Callable[[int], bool],
    into: Optional[dict[int, ReplayedRounds]] = None,
) -> dict[int, ReplayedRounds]:
    """Play `generate --mode draft -k K --temp 0` for every K in `ks` over one recorded output;
    add the rounds to `into` (one entry per K, pooled over prompts) and return it."""
    results = into if into is not None else {}
    for k in ks:
        results.setdefault(k, ReplayedRounds(k, SpecStats(mode="draft", k=k)))
    y, budget = output.sequence, output.budget
    next_start = {k: 0 for k in ks}  # each K's next round starts there; absent: finished
    while next_start:
        n = min(next_start.values())
        visiting = [k for k, start in next_start.items() if start == n]
        lengths = {k: min(k, budget - n - 1) for k in visiting}
        wanted = sorted({j for j in lengths.values() if j > 0})
        proposals = propose_at(n, wanted) if wanted else {}
        for k in visiting:
            proposal = proposals.get(lengths[k], NOTHING) if lengths[k] > 0 else NOTHING
            n_emitted, stopped = _play_round(results[k], proposal, y, n, is_eog)
            if stopped or n + n_emitted >= budget:
                del next_start[k]
            else:
                next_start[k] = n + n_emitted
    return results


def _play_round(rounds: ReplayedRounds, proposal: Proposal, y: Sequence[int], n: int,
                is_eog: Callable[[int], bool]) -> tuple[int, bool]:
    """One round at output position n: (tokens emitted, whether it ended the generation)."""
    draft = list(proposal.tokens)
    accepted = 0
    while accepted < len(draft) and n + accepted < len(y) and draft[accepted] == y[n + accepted]:
        accepted += 1
    emitted = draft[:accepted] + list(y[n + accepted : n + accepted + 1])
    n_emitted, stopped = 0, False
    for token in emitted:
        if is_eog(token):
            stopped = True
            break
        n_emitted += 1
    rounds.stats.record_round(proposal.source if draft else NO_SOURCE, len(draft), accepted, n_emitted)
    rounds.draft_decodes += proposal.draft_decodes if draft else 0
    return n_emitted, stopped


def agreement_proposals(y: Sequence[int], choices: Sequence[int], is_draft_eog: Callable[[int], bool],
                        source: str = MODEL_SOURCE) -> ProposeAt:
    """A same-vocabulary draft's proposals, read off its teacher-forced greedy choices.

    choices[j] is the draft's greedy token at output position j when everything before it is
    y[:j]. A draft continues only along accepted tokens, so the greedy draft at position n is
    y[n], y[n+1], ... while choices agree with y, then the first disagreeing choice, and the
    round accepts exactly that agreeing run. Like `ModelDrafter.propose` it stops after k tokens
    or after an end-of-generation token. What the draft writes after its first mistake is never
    accepted and is not known here: those tokens are UNKNOWN, and the draft is taken to go on
    to k tokens (one that would write an EOG there stops earlier in a real run: a rounds'
    drafted count can then be off, never what it accepts).
    """

    def propose_at(n: int, lengths: Sequence[int]) -> dict[int, Proposal]:
        longest = max(lengths)
        tokens: list[int] = []
        while len(tokens) < longest and n + len(tokens) < len(choices):
            token = choices[n + len(tokens)]
            tokens.append(token)
            if is_draft_eog(token):
                break
            if token != y[n + len(tokens) - 1]:
                tokens += [UNKNOWN] * (longest - len(tokens))
                break
        # ModelDrafter decodes one token per drafted token (the next round's catch-up is
        # priced by the cost model from the round's shape).
        return {j: Proposal(tuple(tokens[:j]), source, min(j, len(tokens))) for j in lengths}

    return propose_at


UNKNOWN = -1  # a drafted token after the draft's first mistake: it matches nothing
