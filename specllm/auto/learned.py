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
# Weight of the latest model round in the model's measured rate.
MODEL_RATE_EMA = 0.3
# Model rounds a run must have measured before its verdict on the draft model is saved for the
# next run: one lucky look (4 of 4 accepted in a quiet moment) once saved 1.17x plain on a CPU
# where model rounds lose, and the next runs began by drafting with the model.
MIN_MODEL_ROUNDS_TO_SAVE = 3


class Learned:
    """What auto mode has learned about acceptance; shared by the generations of one engine."""

    def __init__(self):
        self.lookup: dict[str, LookupAcceptance] = {}
        self.confidence = ConfidenceAcceptance()
        # Model rounds' tokens/s in this generation (None: none measured yet).
        self.model_rounds_rate: Optional[float] = None
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
            self.lookup[key] = LookupAcceptance(MEMORY_MATCH_WEIGHT if source == "memory" else 1.0, chat=chat)
        return self.lookup[key]

    def begin_generation(self, plain_rate: float) -> None:
        """A new generation: its model rounds are judged afresh; the last ones become the verdict."""
        for acceptance in self.lookup.values():
            acceptance.begin_generation()
        ratio = self.model_rate_ratio(plain_rate)
        if ratio is not None:
            self.verdict = ratio
        self.model_rounds_rate = None

    def model_rate(self, plain_rate: float) -> float:
        """Tokens/s of this generation's model rounds; 0 before one is measured (a look first)."""
        return self.model_rounds_rate if self.model_rounds_rate is not None else 0.0

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
        if self.model_rounds_rate is None or plain_rate <= 0:
            return self.verdict
        return self.model_rounds_rate / plain_rate

    def model_verdict_to_save(self, plain_rate: float) -> Optional[float]:
        """The model's rate relative to plain, if this run measured enough rounds to tell."""
        if self.model_rounds_measured < MIN_MODEL_ROUNDS_TO_SAVE:
            return None
        return self.model_rate_ratio(plain_rate)

    def wants_a_look(self) -> bool:
        """Whether to look at the draft model (a short draft) when nothing better is at hand:
        untried; or it paid last time (a saved 1.00x is noise, not a gain) and this generation
        has not looked yet; or it is time to look again."""
        paid = self.verdict is not None and self.verdict > MARGIN and self.model_rounds_rate is None
        return paid or self.should_explore_model()

    def should_explore_model(self) -> bool:
        return self.last_model_round is None or self.rounds - self.last_model_round >= self.explore_interval

    def observe_model_round(self, tokens_per_second: float, plain_rate: float, busy: bool = False) -> None:
        """A model round emitted tokens at this rate; `busy`: on a busy machine, so its rate
        says nothing about the model (the look still counts as one)."""
        self.last_model_round = self.rounds
        if busy:
            return
        old = self.model_rounds_rate
        self.model_rounds_rate = (
            tokens_per_second if old is None else (1 - MODEL_RATE_EMA) * old + MODEL_RATE_EMA * tokens_per_second
        )
        self.model_rounds_measured += 1
        # Where model drafts do not pay, look again less and less often.
        if self.model_rounds_rate < plain_rate:
            self.explore_interval = min(self.explore_interval * 2, MAX_EXPLORE_INTERVAL)
        else:
            self.explore_interval = EXPLORE_INTERVAL
