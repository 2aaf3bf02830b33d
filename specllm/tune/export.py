"""Writing what training made: a GGUF LoRA adapter, or the draft with the adapter merged in.

The adapter follows llama.cpp's convert_lora_to_gguf.py: general.type = "adapter",
general.architecture = the draft's, adapter.type = "lora", adapter.lora.alpha, and per adapted
matrix `<name>.lora_a` (numpy (r, in), GGUF [in, r]) and `<name>.lora_b` (numpy (out, r)).
llama.cpp scales B A by alpha / r, as training did.

The merged draft keeps every tensor of the draft's file but the adapted matrices, which are
written dequantized with the update added (W + alpha / r * B A); llama_model_quantize then
brings them back to the draft's own file type.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .. import llama
from ..errors import TuneError
from .weights import GgufWeights, _gguf


def write_adapter(path: Path, arch: str, alpha: float, lora: Mapping[str, tuple[np.ndarray, np.ndarray]],
                  *, name: str = "") -> None:
    """lora: 'blk.N.<proj>.weight' -> (A (r, in), B (out, r)), float32."""
    gguf = _gguf()
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    if name:
        writer.add_name(name)
    for tensor, (a, b) in lora.items():
        writer.add_tensor(f"{tensor}.lora_a", np.ascontiguousarray(a, dtype=np.float32))
        writer.add_tensor(f"{tensor}.lora_b", np.ascontiguousarray(b, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)


def read_adapter(path: Path) -> tuple[str, float, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(architecture, alpha, {name: (A, B)}) of a GGUF LoRA adapter."""
    gguf = _gguf()
    reader = gguf.GGUFReader(path)
    fields = reader.fields
    if "general.type" not in fields or fields["general.type"].contents() != "adapter":
        raise TuneError(f"{path.name} is not a GGUF LoRA adapter")
    arch = fields["general.architecture"].contents()
    alpha = float(fields[gguf.Keys.Adapter.LORA_ALPHA].contents())
    arrays = {t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(
        tuple(int(n) for n in reversed(t.shape))) for t in reader.tensors}
    pairs = {}
    for name in arrays:
        if name.endswith(".lora_a"):
            base = name[: -len(".lora_a")]
            pairs[base] = (arrays[name], arrays[base + ".lora_b"])
    return arch, alpha, pairs


def merged_updates(alpha: float, lora: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """'blk.N.<proj>.weight' -> alpha / r * B @ A, (out, in)."""
    return {name: (alpha / a.shape[0]) * (b.astype(np.float64) @ a.astype(np.float64)) for name, (a, b) in lora.items()}


def write_merged(draft: Path, updates: Mapping[str, np.ndarray], output: Path, *,
                 ftype: Optional[int] = None, n_threads: Optional[int] = None) -> int:
    """The draft with `updates` added to its matrices, re-quantized to `ftype` (default: the
    draft's own file type). Returns the file type written."""
    gguf = _gguf()
    source = GgufWeights(draft)
    ftype = source.file_type if ftype is None else ftype
    if ftype is None:
        raise TuneError(f"{draft.name} does not say its file type (general.file_type): cannot re-quantize to it")
    reader = source._reader
    with tempfile.TemporaryDirectory(prefix="specllm-merge-", dir=output.parent) as tmp_dir:
        unquantized = Path(tmp_dir) / "merged-f32.gguf"
        writer = gguf.GGUFWriter(unquantized, source.arch, endianess=reader.endianess)
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue
            sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
        merged = {}
        for tensor in reader.tensors:
            if tensor.name in updates:
                merged[tensor.name] = (source.array(tensor.name) + updates[tensor.name]).astype(np.float32)
                data = merged[tensor.name]
                writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes)
            else:
                writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                                       tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in reader.tensors:
            writer.write_tensor_data(merged.get(tensor.name, tensor.data))
        writer.close()
        llama.quantize_model(unquantized, output, ftype, n_threads=n_threads)
    return ftype
