"""Which configurations a bench run measures: the baseline first, then each mode, draft and k."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from ..config import MODES

DEFAULT_KS = (2, 3, 4, 5, 6, 7, 8)
ALL_CATEGORIES = "all"  # the rows that add up every category, when there are several


@dataclass(frozen=True)
class BenchConfig:
    mode: str
    k: int = 0
    draft: Optional[str] = None  # the draft model's name, for `draft` and `auto`

    @property
    def label(self) -> str:
        name = f"{self.mode} {short_name(self.draft)}" if self.draft else self.mode
        return f"{name} k={self.k}" if self.k and self.mode != "auto" else name


def short_name(name: Optional[str]) -> str:
    return re.sub(r"\.gguf$", "", name or "", flags=re.IGNORECASE)


def sweep(modes: Sequence[str], ks: Sequence[int], drafts: Sequence[str]) -> list[BenchConfig]:
    """The configurations to measure, baseline (`none`) first, then n-gram lookup and each draft
    at each k, then auto mode with each draft (or none), drafting at most the largest k."""
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}")
    configs = [BenchConfig("none")]
    if "ngram" in modes:
        configs += [BenchConfig("ngram", k) for k in ks]
    if "draft" in modes:
        configs += [BenchConfig("draft", k, d) for d in drafts for k in ks]
    if "auto" in modes:
        configs += [BenchConfig("auto", max(ks), d) for d in (drafts or [None])]
    return configs
