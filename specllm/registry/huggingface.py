"""Fetching a model's file from the Hugging Face Hub, when `huggingface_hub` is installed."""

from __future__ import annotations

import shutil
from pathlib import Path

from .cache import check_disk_space, place, sha256_file, work_path
from .progress import FetchProgress
from .schema import ModelEntry


class SourceFailed(Exception):
    """One source could not deliver the file; the next one is tried."""


class SourceNotInstalled(SourceFailed):
    """The source needs a package the user does not have: skipped without a warning."""


def fetch_from_hf(entry: ModelEntry, dest: Path, progress: FetchProgress) -> None:
    try:
        import huggingface_hub
    except ImportError:
        raise SourceNotInstalled("huggingface_hub is not installed") from None
    work = work_path(dest, ".hf")
    shutil.rmtree(work, ignore_errors=True)
    try:
        check_disk_space(dest.parent, entry.size, entry)
        progress.note(f"fetching {entry.name} from Hugging Face ({entry.hf_repo})")
        try:
            downloaded = Path(
                huggingface_hub.hf_hub_download(repo_id=entry.hf_repo, filename=entry.hf_file, local_dir=work)
            )
        except Exception as e:  # offline, unreachable, gated, missing: any of them means "next source"
            first_line = (str(e).splitlines() or [""])[0]
            raise SourceFailed(f"{type(e).__name__}: {first_line}" if first_line else type(e).__name__) from None
        sha = sha256_file(downloaded, progress, "verifying")
        expected = entry.hf_sha256 or entry.sha256
        if expected and sha != expected:
            raise SourceFailed(f"its sha256 is {sha}, not {expected}")
        place(downloaded, dest, sha)
    finally:
        shutil.rmtree(work, ignore_errors=True)
