"""A draft's GGUF read for training: its architecture's settings and its weights dequantized.

Only what a hand-written forward (forward.py) needs: no transformers, no torch. The gguf
package dequantizes every llama.cpp quantization type in numpy; matrices come back as
(out, in), the orientation of y = W @ x (GGUF lists dimensions the other way round).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import TuneError

# How each architecture the trainer knows rotates queries and keys (llama.cpp's rope types):
# "norm" turns adjacent pairs (x0, x1), (x2, x3)...; "neox" turns (x_i, x_i+d/2).
ROPE_STYLE = {"llama": "norm", "qwen2": "neox", "gemma3": "neox"}
SUPPORTED_ARCHITECTURES = tuple(ROPE_STYLE)

# The matrices a LoRA adapts: attention and FFN. Not the token embedding or the output matrix
# (tied in small drafts; llama.cpp refuses adapters on them).
PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def _gguf():
    try:
        import gguf
    except ImportError:
        from . import TORCH_INSTALL

        raise TuneError("tune-draft needs the gguf package", hint=f"install it: {TORCH_INSTALL}") from None
    return gguf


@dataclass(frozen=True)
class ArchSettings:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    rope_base: float
    rope_style: str
    rms_eps: float
    # Gemma3 (llama.cpp's build_gemma3; defaults are llama's and qwen2's):
    embd_scale: float = 1.0  # the token embedding is multiplied by this (Gemma: sqrt(n_embd))
    attn_scale: Optional[float] = None  # queries' scale before softmax (None: 1 / sqrt(head_dim))
    ffn_act: str = "silu"  # the gated FFN's activation: "silu" (SwiGLU) or "gelu" (tanh GELU, GeGLU)
    sliding_window: int = 0  # local layers attend to the last `sliding_window` positions (0: none)
    swa_pattern: int = 0  # layer il is local unless il % swa_pattern == swa_pattern - 1 (0: all global)
    rope_base_local: float = 10000.0  # local layers' rotary base (Gemma3: 10000, fixed by llama.cpp)
    rope_scale: float = 1.0  # global layers' positions are multiplied by this (1 / linear scaling factor)

    def is_local(self, layer: int) -> bool:
        """Whether a layer uses sliding-window attention (llama.cpp's set_swa_pattern)."""
        return bool(self.swa_pattern and self.sliding_window) and layer % self.swa_pattern < self.swa_pattern - 1

    def rope(self, layer: int) -> tuple[float, float]:
        """(rotary base, position scale) of a layer."""
        return (self.rope_base_local, 1.0) if self.is_local(layer) else (self.rope_base, self.rope_scale)


# llama.cpp's gemma3: every 6th layer is global, the others see a sliding window (hparams.set_swa_pattern(6)).
GEMMA3_SWA_PATTERN = 6


class GgufWeights:
    """The tensors and settings of one GGUF model file (read lazily, dequantized on demand)."""

    def __init__(self, path: str | Path):
        gguf = _gguf()
        self.path = Path(path)
        try:
            self._reader = gguf.GGUFReader(self.path)
        except (OSError, ValueError) as e:
            raise TuneError(f"cannot read {self.path.name} as GGUF: {e}") from None
        self.tensors = {t.name: t for t in self._reader.tensors}
        self.arch = str(self.field("general.architecture"))
        self.settings = self._settings()

    def field(self, key: str, default=None):
        """A metadata value (a number, a string or a list), or `default`."""
        field = self._reader.fields.get(key)
        return default if field is None else field.contents()

    @property
    def file_type(self) -> Optional[int]:
        """llama_ftype of the file (general.file_type), e.g. 15 for Q4_K_M."""
        value = self.field("general.file_type")
        return None if value is None else int(value)

    def _settings(self) -> ArchSettings:
        arch = self.arch
        if arch not in ROPE_STYLE:
            raise TuneError(f"tune-draft does not know the {arch!r} architecture of {self.path.name}",
                            hint=f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
        n_embd = int(self.field(f"{arch}.embedding_length"))
        n_head = int(self.field(f"{arch}.attention.head_count"))
        head_dim = int(self.field(f"{arch}.attention.key_length", n_embd // n_head))
        return ArchSettings(**self._common(arch, n_embd, n_head, head_dim), **self._gemma3(arch, n_embd, head_dim))

    def _common(self, arch: str, n_embd: int, n_head: int, head_dim: int) -> dict:
        return dict(
            arch=arch,
            n_vocab=int(self.tensors["token_embd.weight"].shape[-1]),
            n_embd=n_embd,
            n_layer=int(self.field(f"{arch}.block_count")),
            n_head=n_head,
            n_head_kv=int(self.field(f"{arch}.attention.head_count_kv", n_head)),
            head_dim=head_dim,
            n_rot=int(self.field(f"{arch}.rope.dimension_count", head_dim)),
            rope_base=float(self.field(f"{arch}.rope.freq_base", 10000.0)),
            rope_style=ROPE_STYLE[arch],
            rms_eps=float(self.field(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        )

    def _gemma3(self, arch: str, n_embd: int, head_dim: int) -> dict:
        """Gemma3's extras, as llama.cpp reads them (llama-model.cpp, LLM_ARCH_GEMMA3). The norm
        weights need no +1: convert_hf_to_gguf.py already added Gemma's 1 to them."""
        if arch != "gemma3":
            return {}
        scaling = self.field(f"{arch}.rope.scaling.type")
        factor = float(self.field(f"{arch}.rope.scaling.factor", 1.0) or 1.0)
        if scaling not in (None, "none", "linear"):
            raise TuneError(f"tune-draft does not know the {scaling!r} rope scaling of {self.path.name}")
        n_layer = int(self.field(f"{arch}.block_count"))
        # llama.cpp scales queries by 1/sqrt(head_dim) except for the 27B (62 layers), where
        # Gemma's query_pre_attn_scalar is n_embd / n_head.
        n_head = int(self.field(f"{arch}.attention.head_count"))
        query_scalar = n_embd / n_head if n_layer == 62 else head_dim
        return dict(embd_scale=math.sqrt(n_embd), attn_scale=1.0 / math.sqrt(query_scalar), ffn_act="gelu",
                    sliding_window=int(self.field(f"{arch}.attention.sliding_window", 0)),
                    swa_pattern=GEMMA3_SWA_PATTERN,
                    rope_scale=1.0 / factor if scaling == "linear" else 1.0)

    def has(self, name: str) -> bool:
        return name in self.tensors

    def array(self, name: str) -> np.ndarray:
        """The tensor dequantized to float32, in numpy's (out, in) orientation."""
        gguf = _gguf()
        tensor = self.tensors[name]
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(n) for n in reversed(tensor.shape))
        values = np.ascontiguousarray(values, dtype=np.float32).reshape(shape)
        return values if values.flags.writeable else values.copy()  # float32 tensors come memory-mapped

    def type_name(self, name: str) -> str:
        return self.tensors[name].tensor_type.name
