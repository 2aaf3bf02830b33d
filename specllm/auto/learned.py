"""What auto mode has learned, shared by the generations of one engine: lookup acceptance per
drafter, the draft model's acceptance per confidence, and how its rounds have fared.

The draft model's rounds are judged per generation. Its rate in one generation (or run) says
little about the next: on a summary the model's tokens are mostly accepted, on fresh code far
fewer, and a verdict carried over once made later HumanEval prompts draft 82-99 tokens with
30-42 accepted, at 0.85x plain. So what carries over (`verdict`: the last rate relative to
plain decoding, saved with the cost profile after enough rounds) decides only when to look at
the model again; drafting with it in earnest needs this generation's own model rounds to have
paid.
"""

from __future__ import annotations

from typing import Optional

from ..drafting.base import MEMORY_SOURCE
from .acceptance import MEMORY_MATCH_WEIGHT, ConfidenceAcceptance, LookupAcceptance

# A draft must promise this much more tokens/s than a plain step: measured rates are noisy,
# and a draft that only ties with plain decoding adds risk for nothing.
MARGIN = 1.03
# Rounds between looks at a draft model whose rounds pay, and the most rounds between looks at
# one that does not (the interval doubles after each look that did not pay).
EXPLORE_INTERVAL = 16
MAX_EXPLORE_INTERVAL = 1024
# Rounds before the first look when an earlier run found that model rounds do not pay.
LOSING_VERDICT_INTERVAL = MAX_EXPLORE_INTERVAL // 16
# How the model's rounds of this generation are weighed: the tokens and seconds of the rounds
# before the latest one fade by this factor per model round (recent rounds weigh more).
MODEL_ROUNDS_FADE = 0.7
# The model's rate is taken to be plain decoding's until its rounds have shown otherwise: its
# tokens and seconds are pooled with this many plain steps (tokens, and their time), a weight
# that fades with the model's rounds like theirs. One look of 2-4 tokens is little evidence: on
# a raw code completion where the 0.5B's tokens were accepted 42% of the time, the model drafted
# 9 rounds and the run ended at 0.91x plain. At this 2-core CPU's costs (0.5B: 0.4 of a target
# step per token) a look with 4 of 4 accepted measures 1.37x plain, and a mean of per-round
# rates (the latest weighing 0.3) then kept the model through two rounds at 0.7x. Pooled with 4
# steps, a first look pays only if it missed at most one of 4 tokens, and one losing round
# after a lucky look ends the model's turn; on a flat T(n) a look with half its tokens
# accepted still pays; after a few rounds the model's own rate is what counts.
MODEL_PRIOR_STEPS = 4.0
# Model rounds a run must have measured before its verdict on the draft model is saved for the
# next run: one lucky look (4 of 4 accepted in a quiet moment) once saved 1.17x plain on a CPU
# where model rounds lose, and the next runs began by drafting with the model.
MIN_MODEL_ROUNDS_TO_SAVE = 3


class Learned:
    """What auto mode has learned about acceptance; shared by the generations of one engine."""

    def __init__(self):
        self.lookup: dict[str, LookupAcceptance] = {}
        self.confidence = ConfidenceAcceptance()
        # Model rounds' tokens and seconds in this generation, and the prior's weight in plain
        # steps, all faded alike (None: none measured yet).
        self.model_rounds: Optional[tuple[float, float, float]] = None
        # Their rate relative to plain decoding as last measured: in an earlier generation, or
        # an earlier run (the saved profile). None: never measured.
        self.verdict: Optional[float] = None
        self.rounds = 0
        self.last_model_round: Optional[int] = None  # None: never looked at
        self.explore_interval = EXPLORE_INTERVAL
        self.model_rounds_measured = 0  # quiet model rounds in this run (start_from does not count)

    def lookup_acceptance(self, source: str, chat: bool = False) -> LookupAcceptance:
        """Lookup acceptance of one source, kept apart for answers in a chat template, which
        copy from their prompt less than raw completions do (see CHAT_MATCH_PRIOR)."""
        key = f"{source}/chat" if chat else source
        if key not in self.lookup:
            self.lookup[key] = LookupAcceptance(MEMORY_MATCH_WEIGHT if source == MEMORY_SOURCE else 1.0, chat=chat)
        return self.lookup[key]

    def begin_generation(self, plain_rate: float) -> None:
        """A new generation: its model rounds are judged afresh; the last ones become the verdict."""
        for acceptance in self.lookup.values():
            acceptance.begin_generation()
        ratio = self.model_rate_ratio(plain_rate)
        if ratio is not None:
            self.verdict = ratio
        self.model_rounds = None

    def model_rate(self, plain_rate: float) -> float:
        """Tokens/s of this generation's model rounds, pooled with MODEL_PRIOR_STEPS plain steps;
        0 before one is measured (a look first)."""
        if self.model_rounds is None or plain_rate <= 0:
            return 0.0
        tokens, seconds, prior = self.model_rounds
        return (tokens + prior) / (seconds + prior / plain_rate)

    def start_from(self, model_rate_ratio: Optional[float], plain_rate: float) -> None:
        """Begin with what earlier runs on this machine measured: where model rounds did not pay,
        the first look waits (a look costs more than short outputs win)."""
        if model_rate_ratio is None or plain_rate <= 0:
            return
        self.verdict = model_rate_ratio
        if model_rate_ratio < 1.0:
            self.last_model_round = 0
            self.explore_interval = LOSING_VERDICT_INTERVAL

    def model_rate_ratio(self, plain_rate: float) -> Optional[float]:
        if self.model_rounds is None or plain_rate <= 0:
            return self.verdict
        return self.model_rate(plain_rate) / plain_rate

    def model_verdict_to_save(self, plain_rate: float) -> Optional[float]:
        """The model's rate relative to plain, if this run measured enough rounds to tell."""
        if self.model_rounds_measured < MIN_MODEL_ROUNDS_TO_SAVE:
            return None
        return self.model_rate_ratio(plain_rate)

    def wants_a_look(self) -> bool:
        """Whether to look at the draft model (a short draft) when nothing better is at hand:
        untried; or it paid last time (a saved 1.00x is noise, not a gain) and this generation
        has not looked yet; or it is time to look again."""
        paid = self.verdict is not None and self.verdict > MARGIN and self.model_rounds is None
        return paid or self.should_explore_model()

    def should_explore_model(self) -> bool:
        return self.last_model_round is None or self.rounds - self.last_model_round >= self.explore_interval

    def observe_model_round(self, tokens: int, seconds: float, plain_rate: float, busy: bool = False) -> None:
        """A model round emitted `tokens` in `seconds` (drafting and verifying); `busy`: on a busy
        machine, so its time says nothing about the model (the look still counts as one)."""
        self.last_model_round = self.rounds
        if busy or seconds <= 0:
            return
        if self.model_rounds is None:
            self.model_rounds = (tokens, seconds, MODEL_PRIOR_STEPS)
        else:
            old_tokens, old_seconds, prior = self.model_rounds
            self.model_rounds = (MODEL_ROUNDS_FADE * old_tokens + tokens, MODEL_ROUNDS_FADE * old_seconds + seconds,
                                 MODEL_ROUNDS_FADE * prior)
        self.model_rounds_measured += 1
        # Where model drafts do not pay, look again less and less often.
        if self.model_rate(plain_rate) < plain_rate:
            self.explore_interval = min(self.explore_interval * 2, MAX_EXPLORE_INTERVAL)
        else:
            self.explore_interval = EXPLORE_INTERVAL
