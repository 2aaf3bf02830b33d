"""Auto mode: decide each round, from measured costs and learned acceptance, whether and how
much to draft. costs.py: what decodes cost (healing); acceptance.py: what drafts are worth;
learned.py: what generations share; policy.py: the per-round choice; contention.py: whether a
decode ran on a busy machine; trace.py: each round's prediction against its outcome."""

from .acceptance import (
    AcceptanceTable,
    ConfidenceAcceptance,
    LookupAcceptance,
    best_draft_length,
    confidence_bucket,
    expected_tokens,
)
from .contention import ContentionMeter
from .costs import CostModel, ShapePoint, time_batches
from .learned import Learned
from .policy import AutoPolicy
from .trace import RoundRecord, RoundTrace, calibration_report, read_trace

__all__ = [
    "AcceptanceTable", "AutoPolicy", "ConfidenceAcceptance", "ContentionMeter", "CostModel", "Learned",
    "LookupAcceptance", "RoundRecord", "RoundTrace", "ShapePoint", "best_draft_length", "calibration_report",
    "confidence_bucket", "expected_tokens", "read_trace", "time_batches",
]
