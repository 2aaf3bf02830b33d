"""A draft's GGUF read for training: its architecture's settings and its weights dequantized.

Only what a hand-written forward (forward.py) needs: no transformers, no torch. The gguf
package dequantizes every llama.cpp quantization type in numpy; matrices come back as
(out, in), the orientation of y = W @ x (GGUF lists dimensions the other way round).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import TuneError

# How each architecture the trainer knows rotates queries and keys (llama.cpp's rope types):
# "norm" turns adjacent pairs (x0, x1), (x2, x3)...; "neox" turns (x_i, x_i+d/2).
ROPE_STYLE = {"llama": "norm", "qwen2": "neox"}
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
        return ArchSettings(
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
