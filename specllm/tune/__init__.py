"""Tune a draft for its target (`specllm tune-draft`): distil the target into a LoRA adapter.

    data.py      the target's own outputs and top-k log-probabilities, in a resumable file
    weights.py   the draft's GGUF read and dequantized (numpy); its architecture's settings
                 (llama, qwen2, gemma3)
    forward.py   a hand-written PyTorch forward of that architecture, with LoRA on the projections
    train.py     the loss (KL to the target's top-k + cross-entropy), the loop, checkpoints
    crossvocab.py  a draft of another vocabulary (--cross-vocab): the target's text in the draft's
                 tokens (cross-entropy only), acceptance replayed as `specllm drafts` does
    export.py    the GGUF LoRA adapter; the merged and re-quantized draft
    agreement.py teacher-forced greedy acceptance of a draft (llama.cpp), before and after

Only forward.py and train.py import torch (the `[tune]` extra); `require_torch` says how to get it.
"""

from __future__ import annotations

from ..errors import TuneError

# PyPI's default torch wheel for Linux bundles CUDA (about 3 GB); the CPU build is much smaller.
TORCH_INSTALL = "pip install 'specllm[tune]' (CPU-only torch: pip install torch --index-url https://download.pytorch.org/whl/cpu)"


def require_torch():
    """The torch module, or one clear error saying how to install it."""
    try:
        import torch
    except ImportError:
        raise TuneError("tune-draft needs PyTorch, which is not installed", hint=f"install it: {TORCH_INSTALL}") from None
    return torch
