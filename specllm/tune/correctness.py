"""The guard that the PyTorch forward is the draft llama.cpp runs: logits on the same tokens.

A wrong rotary style or a permuted Q/K (some GGUF loaders get Qwen2's wrong) gives logits that
differ by whole units; float32 summation order alone differs by ~1e-4. llama.cpp multiplies
quantized matrices with activations quantized to 8 bits, so for a quantized draft the two
differ a little more: the guard compares the largest and the mean difference with the spread
of the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .. import llama
from ..errors import TuneError
from .weights import GgufWeights

# The |torch - llama.cpp| logit differences accepted, largest and mean, as shares of the logits'
# standard deviation; a float file and a quantized one apart. Measured on 118-128 tokens of a
# HumanEval prompt:
# - float weights: the float32 tiny models 1e-4 and 1e-5; Gemma-3-270M and Qwen2.5-Coder-0.5B
#   written in float32 by llama_model_quantize 0.008 and 0.0005, 0.016 and 0.0005.
# - quantized weights (llama.cpp multiplies them with activations quantized to 8 bits):
#   Qwen2.5-Coder-0.5B Q4_K_M 0.25 and 0.020 (max 0.69, mean 0.056, spread 2.8); Gemma-3-270M
#   Q4_K_M 0.53 and 0.048 (max 2.85, mean 0.26, spread 5.4; argmax agreement 99%).
# - what a wrong forward gives: a wrong rotary style (a wrong Q/K permutation) on the tiny
#   Qwen2-shaped model 0.95 and 0.055; on Gemma-3-270M Q4_K_M a wrong rotary style 5.1 and 0.69,
#   the global base on local layers 3.4 and 0.33, SiLU for GELU 4.0 and 0.46.
FLOAT_MAX_DIFF, FLOAT_MEAN_DIFF = 0.1, 0.01
QUANTIZED_MAX_DIFF, QUANTIZED_MEAN_DIFF = 1.0, 0.1
MAX_RELATIVE_DIFF, MEAN_RELATIVE_DIFF = FLOAT_MAX_DIFF, FLOAT_MEAN_DIFF  # the strict pair, the default
FLOAT_TYPES = ("F32", "F16", "BF16")
GUARD_TOKENS = 128  # enough positions for rotary errors to show, cheap on a CPU


@dataclass(frozen=True)
class LogitsCheck:
    tokens: int
    max_abs_diff: float
    mean_abs_diff: float
    logit_std: float
    argmax_agreement: float
    max_tolerated: float = MAX_RELATIVE_DIFF
    mean_tolerated: float = MEAN_RELATIVE_DIFF

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / self.logit_std if self.logit_std else float("inf")

    @property
    def mean_relative_diff(self) -> float:
        return self.mean_abs_diff / self.logit_std if self.logit_std else float("inf")

    @property
    def ok(self) -> bool:
        return self.relative_diff <= self.max_tolerated and self.mean_relative_diff <= self.mean_tolerated

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "max_abs_diff": self.max_abs_diff, "mean_abs_diff": self.mean_abs_diff,
                "logit_std": self.logit_std, "relative_diff": self.relative_diff,
                "mean_relative_diff": self.mean_relative_diff, "argmax_agreement": self.argmax_agreement,
                "tolerance": {"max": self.max_tolerated, "mean": self.mean_tolerated}}


def llama_logits(model: llama.Model, tokens: Sequence[int], *, threads: Optional[int] = None,
                 adapter: Optional[llama.LoraAdapter] = None) -> np.ndarray:
    """llama.cpp's logits for every position of `tokens` (a copy)."""
    with llama.Context(model, n_ctx=max(len(tokens), 64), n_batch=max(len(tokens), 64), n_threads=threads) as ctx:
        if adapter is not None:
            llama.set_lora(ctx, adapter)
        return np.array(ctx.decode(list(tokens), all_logits=True), dtype=np.float32)


def compare_logits(torch_logits: np.ndarray, llama_logits_: np.ndarray, *, quantized: bool = False) -> LogitsCheck:
    diff = np.abs(torch_logits.astype(np.float64) - llama_logits_)
    agree = np.mean(np.argmax(torch_logits, -1) == np.argmax(llama_logits_, -1))
    tolerance = (QUANTIZED_MAX_DIFF, QUANTIZED_MEAN_DIFF) if quantized else (FLOAT_MAX_DIFF, FLOAT_MEAN_DIFF)
    return LogitsCheck(len(torch_logits), float(diff.max()), float(diff.mean()), float(llama_logits_.std()),
                       float(agree), *tolerance)


def is_quantized(weights: GgufWeights) -> bool:
    """Whether llama.cpp multiplies some of the model's matrices in a quantized type."""
    return any(weights.type_name(name) not in FLOAT_TYPES for name in weights.tensors if name.endswith(".weight"))


def check_forward(draft_model, path, tokens: Sequence[int], *, threads: Optional[int] = None) -> LogitsCheck:
    """Compare the torch DraftModel with llama.cpp on `tokens`; a mismatch beyond the tolerance
    stops tuning (training a wrong model would only waste the time)."""
    import torch

    tokens = list(tokens)[:GUARD_TOKENS]
    with torch.no_grad():
        ours = draft_model.logits(torch.tensor(tokens, device=draft_model.device)).float().cpu().numpy()
    with llama.Model(path) as model:
        theirs = llama_logits(model, tokens, threads=threads)
    check = compare_logits(ours, theirs, quantized=is_quantized(GgufWeights(path)))
    if not check.ok:
        raise TuneError(
            f"the PyTorch forward of {path.name} does not match llama.cpp: logits differ by up to "
            f"{check.max_abs_diff:.3g}, {check.mean_abs_diff:.3g} on average ({check.relative_diff:.2f} and "
            f"{check.mean_relative_diff:.3f} of their spread; tolerated {check.max_tolerated} and "
            f"{check.mean_tolerated})",
            hint="this architecture variant is not supported by tune-draft yet")
    return check
