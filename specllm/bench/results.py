"""A bench run's results: runs pooled per configuration and group, one row each, with the speedup
against the group's baseline, the cost model's prediction and its error; JSON and CSV."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from ..errors import UsageError
from ..stats import SpecStats
from .costs import MeasuredCosts, best_k_by_model, predicted_costs, predicted_speedup, prediction_error
from .sweep import BenchConfig

if TYPE_CHECKING:
    from .run import BenchSettings

ROW_FIELDS = (
    "mode", "draft", "k", "category", "context_length", "prompts", "prompt_tokens", "tokens", "rounds",
    "acceptance_rate", "mean_accepted_length", "mean_draft_length", "per_position_acceptance", "tokens_per_second",
    "speedup", "predicted_speedup", "prediction_error", "ms_per_round", "predicted_ms_per_round",
    "target_ms_per_round", "predicted_target_ms_per_round", "draft_ms_per_round", "predicted_draft_ms_per_round",
    "target_ms", "draft_ms", "chat_template", "best", "refused",
)
PREDICTED_MODES = ("ngram", "draft")  # auto decides per round, beyond what the round shapes price

GroupKey = tuple[str, Optional[int]]  # (category, context length)


@dataclass
class Totals:
    """Runs added up per configuration and group."""

    stats: dict[tuple[BenchConfig, GroupKey], SpecStats] = field(default_factory=dict)
    prompts: dict[tuple[BenchConfig, GroupKey], int] = field(default_factory=dict)

    def add(self, config: BenchConfig, group: GroupKey, stats: SpecStats) -> None:
        key = (config, group)
        if key not in self.stats:
            self.stats[key] = SpecStats(mode=config.mode, k=config.k)
            self.prompts[key] = 0
        self.stats[key].add(stats)
        self.prompts[key] += 1

    def pooled(self, configs: Sequence[BenchConfig], group: GroupKey) -> SpecStats:
        """The runs of several configurations (a draft's whole k sweep) as one."""
        pooled = SpecStats()
        for config in configs:
            if (config, group) in self.stats:
                pooled.add(self.stats[(config, group)])
        return pooled


def make_rows(
    configs: Sequence[BenchConfig],
    groups: Sequence[GroupKey],
    totals: Totals,
    costs: dict[GroupKey, MeasuredCosts],
    chat_template: Optional[str] = None,
) -> list[dict]:
    """One row per group and configuration; speedups against the group's baseline (configs[0])."""
    rows = []
    for group in groups:
        category, length = group
        baseline = totals.stats.get((configs[0], group))
        base_rate = baseline.tokens_per_second if baseline else 0.0
        group_rows = []
        for config in configs:
            stats = totals.stats.get((config, group))
            if stats is None:
                continue
            rate = stats.tokens_per_second
            speedup = rate / base_rate if base_rate > 0 else None
            group_costs = costs.get(group)
            predicted, parts = None, None
            if config.mode in PREDICTED_MODES + ("none",) and group_costs is not None:
                parts = predicted_costs(stats, group_costs, config.draft)
                predicted = predicted_speedup(stats, group_costs, config.draft)
            if config.mode == "none":
                predicted = 1.0  # the unit: o is what makes T(1) + o match the plain runs
            per_round = 1e3 / max(stats.rounds, 1)  # seconds in all -> ms per round
            group_rows.append({
                "mode": config.mode,
                "draft": config.draft,
                "k": config.k,
                "category": category,
                "context_length": length,
                "prompts": totals.prompts[(config, group)],
                "prompt_tokens": stats.prompt_tokens / max(totals.prompts[(config, group)], 1),
                "tokens": stats.generated,
                "rounds": stats.rounds,
                "acceptance_rate": stats.acceptance_rate,
                "mean_accepted_length": stats.mean_accepted_length,
                "mean_draft_length": stats.mean_draft_length,
                "per_position_acceptance": stats.per_position_acceptance,
                "tokens_per_second": rate,
                "speedup": speedup,
                "predicted_speedup": predicted,
                "prediction_error": prediction_error(predicted, speedup) if config.mode != "none" else None,
                # Where the time of a round went, as measured and as predicted.
                "ms_per_round": stats.decode_seconds * per_round,
                "predicted_ms_per_round": parts.total * per_round if parts else None,
                "target_ms_per_round": stats.target_seconds * per_round,
                "predicted_target_ms_per_round": parts.target * per_round if parts else None,
                "draft_ms_per_round": stats.draft_seconds * per_round,
                "predicted_draft_ms_per_round": parts.draft * per_round if parts else None,
                "target_ms": stats.target_seconds * 1e3,
                "draft_ms": stats.draft_seconds * 1e3,
                "chat_template": chat_template,
                "best": False,
                "refused": None,
            })
        if group_rows:
            max(group_rows, key=lambda r: r["tokens_per_second"])["best"] = True
        rows += group_rows
    return rows


def model_best_ks(
    configs: Sequence[BenchConfig],
    groups: Sequence[GroupKey],
    totals: Totals,
    costs: dict[GroupKey, MeasuredCosts],
) -> list[dict]:
    """Per draft model and group: the k the cost model finds best, on acceptance pooled over k."""
    out = []
    drafts = list(dict.fromkeys(c.draft for c in configs if c.mode == "draft"))
    for group in groups:
        if group not in costs:
            continue
        for draft in drafts:
            swept = [c for c in configs if c.mode == "draft" and c.draft == draft]
            pooled = totals.pooled(swept, group)
            if not pooled.rounds:
                continue
            k, speedup = best_k_by_model(pooled.per_position_acceptance, costs[group], draft, max(c.k for c in swept))
            out.append({"draft": draft, "category": group[0], "context_length": group[1], "k": k,
                        "predicted_speedup": speedup})
    return out


def refused_row(draft: str, reason: str) -> dict:
    row = dict.fromkeys(ROW_FIELDS)
    row.update(mode="draft", draft=draft, refused=reason, best=False)
    return row


@dataclass
class BenchResult:
    settings: "BenchSettings"
    target: str
    rows: list[dict]
    best_k: list[dict]
    costs: dict[GroupKey, MeasuredCosts]
    refused: dict[str, str]
    warnings: list[str]
    chat_template: Optional[str] = None  # the target's template around a prompt, "{prompt}" marking it

    def to_dict(self) -> dict:
        s, engine = self.settings, self.settings.engine
        return {
            "target": self.target,
            "chat_template": self.chat_template,
            "settings": {
                "drafts": [Path(d).name for d in s.drafts], "ks": list(s.ks), "modes": list(s.modes),
                "max_tokens": s.max_tokens, "temperature": s.params.temperature, "seed": s.seed,
                "ignore_eos": s.ignore_eos, "chat": s.chat, "context_lengths": list(s.context_lengths),
                "ctx_size": engine.ctx_size, "threads": engine.threads, "n_gpu_layers": engine.n_gpu_layers,
            },
            "costs": [{"category": category, "context_length": length, **c.to_dict()}
                      for (category, length), c in self.costs.items()],
            "best_k": self.best_k,
            "warnings": self.warnings,
            "rows": self.rows,
        }


def result_json(result: BenchResult) -> str:
    return json.dumps(result.to_dict(), indent=2, ensure_ascii=False)


def write_csv(rows: Sequence[dict], path: Path) -> None:
    try:
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=ROW_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                cells = {k: ("" if v is None else v) for k, v in row.items()}
                if row.get("per_position_acceptance") is not None:
                    cells["per_position_acceptance"] = " ".join(f"{p:.4f}" for p in row["per_position_acceptance"])
                writer.writerow(cells)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from None
