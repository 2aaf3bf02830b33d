"""What specllm says about a GGUF model, from its header only: ModelFacts and the vocabulary id.

The vocabulary id (`vocab_id`) is a fingerprint of what makes two models pair token by token,
exactly what `check` compares (specllm/drafting/compat.py): the tokenizer type and every token's
text. Trailing padding is left out, so a vocabulary padded to a round size groups with the
unpadded one (compat allows up to 128 ids that only one side has): Qwen2.5-7B pads 151,665 real
tokens to 152,064 with "[PAD151665]".., the 0.5B to 151,936. Padding is a trailing run of
tokens typed UNUSED, or whose text is a known filler (see PADDING_TEXT).

Special ids are in it as texts (id 151645 is "<|im_end|>" in both or the hash differs), but
which ids are BOS/EOS/EOT, and which tokens are typed control, are not: a base and an instruct
model of one family end on different tokens (<|endoftext|> vs <|im_end|>) and still pair, and
converter versions type the same added tokens differently (control or user-defined). compat
treats both as warnings at most, never as a refusal, and the id must not split what check pairs.
Not caught: vocabularies that check pairs after masking a few differing ids (Qwen2 vs Qwen2.5,
whose 19 extra real tokens sit where Qwen2 has padding; Llama-3.0 vs 3.1's renamed reserved
tokens) get different ids: an exact hash cannot tolerate differences.

A split model (NAME-00001-of-00003.gguf ...) is one model: the first part holds the metadata,
every part holds tensor infos, and its size is that of all parts.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .gguf_header import GGUFHeader, GGUFHeaderError, read_header

TOKEN_TYPE_UNUSED = 5
# Fillers that converters append to reach a round vocabulary size ([PAD151643] from
# convert_hf_to_gguf, <|extra_N|> in Qwen-1, <unusedN> in Gemma, <pad_N>/<|pad_N|> elsewhere).
PADDING_TEXT = re.compile(rb"^(\[PAD\d+\]|<\|extra_\d+\|>|<unused\d+>|<\|?pad_?\d*\|?>)$")
VOCAB_ID_HEX = 16  # 64 bits: no accidental collision among the models of one machine

SPLIT_NAME = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)

# llama.cpp's enum llama_ftype (general.file_type) -> the name users know.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
    18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S",
    25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M",
    32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}  # fmt: skip
QUANT_IN_NAME = re.compile(r"(?<![A-Za-z0-9])(I?Q\d_[A-Z0-9_]+?|Q\d_\d|BF16|F16|F32)(?![A-Za-z0-9])", re.IGNORECASE)


class NotAModel(Exception):
    """A valid GGUF file that is not a language model (a vision projector, a LoRA adapter)."""


@dataclass(frozen=True)
class ModelFacts:
    architecture: str
    title: Optional[str]  # general.name, e.g. "Qwen2.5 Coder 1.5B Instruct" (not the reference name)
    parameters: int
    quantization: Optional[str]
    size_bytes: int
    context_length: Optional[int]
    layers: Optional[int]
    hidden_size: Optional[int]
    heads: Optional[int]
    heads_kv: Optional[int]
    vocab_type: Optional[str]
    vocab_size: Optional[int]
    vocab_id: Optional[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelFacts:
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})


def quant_in_name(file_name: str) -> Optional[str]:
    """The quantization a file name states (qwen2.5-0.5b-instruct-q4_k_m.gguf -> Q4_K_M)."""
    found = QUANT_IN_NAME.search(file_name)
    return found[1].upper() if found else None


def split_parts(path: Path) -> list[Path]:
    """Every part of a split model, given its first part; [path] for a whole file."""
    match = SPLIT_NAME.match(path.name)
    if not match:
        return [path]
    count = int(match["count"])
    return [path.with_name(f"{match['stem']}-{no:05d}-of-{count:05d}.gguf") for no in range(1, count + 1)]


def is_later_split_part(name: str) -> bool:
    match = SPLIT_NAME.match(name)
    return bool(match) and int(match["no"]) > 1


def is_projector_name(name: str) -> bool:
    return "mmproj" in name.lower()


def read_model_facts(path: Path) -> ModelFacts:
    """The facts of the model whose (first) file is `path`: GGUFHeaderError if a file is unreadable,
    NotAModel for a projector or adapter."""
    header = read_header(path)
    kind = str(header.metadata.get("general.type", "model"))
    if kind != "model" or header.architecture == "clip":
        raise NotAModel(f"{path}: a GGUF {kind if kind != 'model' else 'vision projector'}, not a language model")
    parts = split_parts(path)
    n_elements, size = header.n_elements, path.stat().st_size
    for part in parts[1:]:
        if not part.is_file():
            raise GGUFHeaderError(f"{path}: split model without its part {part.name}")
        n_elements += read_header(part).n_elements
        size += part.stat().st_size
    return facts_from_header(header, size_bytes=size, n_elements=n_elements, file_name=path.name)


def facts_from_header(header: GGUFHeader, *, size_bytes: int, n_elements: int, file_name: str) -> ModelFacts:
    meta = header.metadata
    file_type = meta.get("general.file_type")
    quantization = FILE_TYPES.get(file_type) if isinstance(file_type, int) else None
    if quantization is None:
        quantization = quant_in_name(file_name)
    parameters = meta.get("general.parameter_count")
    heads_kv = header.arch_value("attention.head_count_kv")
    return ModelFacts(
        architecture=header.architecture,
        title=meta.get("general.name"),
        parameters=int(parameters) if isinstance(parameters, int) and parameters > 0 else n_elements,
        quantization=quantization,
        size_bytes=size_bytes,
        context_length=_int(header.arch_value("context_length")),
        layers=_int(header.arch_value("block_count")),
        hidden_size=_int(header.arch_value("embedding_length")),
        heads=_int(header.arch_value("attention.head_count")),
        heads_kv=_int(heads_kv) if heads_kv is not None else _int(header.arch_value("attention.head_count")),
        vocab_type=meta.get("tokenizer.ggml.model"),
        vocab_size=len(header.tokens) if header.tokens is not None else None,
        vocab_id=vocab_fingerprint(header),
    )


def vocab_fingerprint(header: GGUFHeader) -> Optional[str]:
    """The vocabulary id (see the module docstring); None when the file has no token list."""
    tokens = header.tokens
    if tokens is None or len(tokens) == 0:
        return None
    types = header.token_types if header.token_types is not None and len(header.token_types) == len(tokens) else None
    n_real = len(tokens) - trailing_padding(tokens, types)
    digest = hashlib.sha256()
    digest.update(str(header.metadata.get("tokenizer.ggml.model", "")).encode() + b"\0")
    digest.update(tokens.prefix(n_real))
    return digest.hexdigest()[:VOCAB_ID_HEX]


def trailing_padding(tokens, types: Optional[np.ndarray]) -> int:
    """How many ids at the end are padding (never the whole vocabulary)."""
    n = len(tokens)
    count = 0
    while count < n - 1:
        i = n - 1 - count
        unused = types is not None and types[i] == TOKEN_TYPE_UNUSED
        if not (unused or PADDING_TEXT.match(tokens.text(i))):
            break
        count += 1
    return count


def _int(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
