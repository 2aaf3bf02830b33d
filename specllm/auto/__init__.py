"""Auto mode: decide each round, from measured costs and learned acceptance, whether and how
much to draft. costs.py: what decodes cost (healing); acceptance.py: what drafts are worth;
policy.py: the per-round choice."""

from .acceptance import (
    AcceptanceTable,
    ConfidenceAcceptance,
    LookupAcceptance,
    best_draft_length,
    confidence_bucket,
    expected_tokens,
)
from .costs import CostModel, ShapePoint, time_batches
from .policy import AutoPolicy, Learned

__all__ = [
    "AcceptanceTable", "AutoPolicy", "ConfidenceAcceptance", "CostModel", "Learned", "LookupAcceptance",
    "ShapePoint", "best_draft_length", "confidence_bucket", "expected_tokens", "time_batches",
]
