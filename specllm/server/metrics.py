"""The server's counters, rendered in Prometheus' text exposition format (GET /metrics).

The counters add up: specllm_generated_tokens_total is the sum of the responses'
usage.completion_tokens, and the drafted/accepted counters the sums of their `speculative`
fields, split by drafter source (Draft.source: "model", "ngram", "suffix", "memory", "xvocab";
plain rounds are "none").
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Callable

from ..stats import SpecStats

# (name, type, help) in the order they are printed.
METRICS = (
    ("specllm_requests_total", "counter", "HTTP requests answered, by endpoint and status code."),
    ("specllm_generations_total", "counter", "Generations run, by finish reason (stop, length, cancelled, error)."),
    ("specllm_prompt_tokens_total", "counter", "Prompt tokens of the generations run."),
    ("specllm_generated_tokens_total", "counter", "Tokens generated (the responses' completion_tokens)."),
    ("specllm_rounds_total", "counter", "Target decodes during generation, by drafter source."),
    ("specllm_drafted_tokens_total", "counter", "Tokens drafted, by drafter source."),
    ("specllm_accepted_tokens_total", "counter", "Drafted tokens the target accepted, by drafter source."),
    ("specllm_prompt_seconds_total", "counter", "Seconds spent processing prompts (after KV cache reuse)."),
    ("specllm_decode_seconds_total", "counter", "Seconds spent generating, after the prompt."),
    ("specllm_slot_drafted_tokens_total", "counter", "Tokens drafted, by slot and drafter source."),
    ("specllm_slot_accepted_tokens_total", "counter",
     "Drafted tokens the target accepted, by slot and drafter source."),
    ("specllm_batch_rows", "histogram", "Rows (last tokens, drafts, prompt chunks) in each shared target decode."),
    ("specllm_queue_waiting", "gauge", "Requests waiting for a free slot."),
    ("specllm_generating", "gauge", "Generations running (at most --parallel: one per slot)."),
    ("specllm_slots_busy", "gauge", "Slots generating."),
    ("specllm_slots_total", "gauge", "Slots (--parallel): sequences decoded together."),
)
# Upper bounds of the batch-size histogram's buckets (rows per decode; n_batch is 512).
BATCH_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
KNOWN_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")


class Metrics:
    """Thread-safe: the engine's worker thread and the event loop both write."""

    def __init__(self, gauges: Callable[[], dict[str, float]] = dict):
        self._lock = threading.Lock()
        self._counters: dict[str, Counter] = {name: Counter() for name, kind, _ in METRICS if kind == "counter"}
        self._gauges = gauges
        self._batch_rows = [0] * len(BATCH_ROWS_BUCKETS)  # decodes per bucket (not cumulative)
        self._batch_rows_sum = self._batch_rows_count = 0

    def observe_round(self, rows: int, seconds: float) -> None:
        """One shared decode of `rows` rows (the scheduler's on_round)."""
        with self._lock:
            for i, bound in enumerate(BATCH_ROWS_BUCKETS):
                if rows <= bound:
                    self._batch_rows[i] += 1
                    break
            self._batch_rows_sum += rows
            self._batch_rows_count += 1

    def count_request(self, path: str, status: int) -> None:
        endpoint = path if path in KNOWN_ENDPOINTS else "other"  # no label per unknown path
        with self._lock:
            self._counters["specllm_requests_total"][(("endpoint", endpoint), ("status", str(status)))] += 1

    def count_generation(self, finish_reason: str, *, prompt_tokens: int, completion_tokens: int,
                         stats: SpecStats | None, slot: int | None = None) -> None:
        c = self._counters
        with self._lock:
            c["specllm_generations_total"][(("finish_reason", finish_reason),)] += 1
            c["specllm_prompt_tokens_total"][()] += prompt_tokens
            c["specllm_generated_tokens_total"][()] += completion_tokens
            if stats is None:
                return
            for source, (rounds, drafted, accepted) in stats.counts_by_source().items():
                c["specllm_rounds_total"][(("source", source),)] += rounds
                c["specllm_drafted_tokens_total"][(("source", source),)] += drafted
                c["specllm_accepted_tokens_total"][(("source", source),)] += accepted
                if slot is not None:
                    c["specllm_slot_drafted_tokens_total"][(("slot", str(slot)), ("source", source))] += drafted
                    c["specllm_slot_accepted_tokens_total"][(("slot", str(slot)), ("source", source))] += accepted
            c["specllm_prompt_seconds_total"][()] += stats.prompt_seconds
            c["specllm_decode_seconds_total"][()] += stats.decode_seconds

    def render(self) -> str:
        gauges = self._gauges()
        lines = []
        with self._lock:
            for name, kind, help_text in METRICS:
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
                if kind == "gauge":
                    lines.append(f"{name} {_number(gauges.get(name, 0))}")
                    continue
                if kind == "histogram":
                    lines += self._histogram_lines(name)
                    continue
                samples = self._counters[name]
                if not samples and name in _UNLABELLED:
                    samples = {(): 0}  # a total that is still zero is still a total
                for labels, value in sorted(samples.items()):
                    lines.append(f"{name}{_labels(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"

    def _histogram_lines(self, name: str) -> list[str]:
        lines, cumulative = [], 0
        for bound, n in zip(BATCH_ROWS_BUCKETS, self._batch_rows):
            cumulative += n
            lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self._batch_rows_count}')
        lines.append(f"{name}_sum {self._batch_rows_sum}")
        lines.append(f"{name}_count {self._batch_rows_count}")
        return lines


_UNLABELLED = ("specllm_prompt_tokens_total", "specllm_generated_tokens_total", "specllm_prompt_seconds_total",
               "specllm_decode_seconds_total")


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    # Label values here are endpoints, status codes, sources and finish reasons: no quotes or
    # backslashes to escape.
    return "{" + ",".join(f'{key}="{value}"' for key, value in labels) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
