"""Lay GGUF files out as the local stores do (Ollama, the Hugging Face and llama.cpp caches, LM
Studio), under a HOME of the test's choosing: the real layouts, content-addressed blobs and
symlinks included, so that the store readers are tested against what those tools write."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

OLLAMA_MODEL = "application/vnd.ollama.image.model"
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _place(source: Path, dest: Path, *, link: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() or dest.is_symlink():
        return
    if link:
        dest.symlink_to(source.resolve())
    else:
        shutil.copyfile(source, dest)


def ollama_model(root: Path, name: str, tag: str, gguf: Path, *, link: bool = False, extra_layers: bool = True) -> Path:
    """root = the models folder (~/.ollama/models). Writes the blob and the manifest of
    registry.ollama.ai/library/NAME:TAG, with a template and a params layer beside the model's."""
    digest = _sha256(gguf)
    blob = root / "blobs" / f"sha256-{digest}"
    _place(gguf, blob, link=link)
    layers = [{"mediaType": OLLAMA_MODEL, "digest": f"sha256:{digest}", "size": gguf.stat().st_size}]
    if extra_layers:
        for media_type, content in (("template", b"{{ .Prompt }}"), ("params", b'{"temperature": 0}')):
            small = hashlib.sha256(content).hexdigest()
            (root / "blobs" / f"sha256-{small}").write_bytes(content)
            layers.append({"mediaType": f"application/vnd.ollama.image.{media_type}", "digest": f"sha256:{small}", "size": len(content)})
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "config": {}, "layers": layers}))
    return manifest


def hub_repo(root: Path, repo: str, files: dict[str, Path], *, commit: str = FAKE_COMMIT, link: bool = False) -> Path:
    """root = the hub cache (~/.cache/huggingface/hub). Blobs by hash, the snapshot's files as
    relative symlinks into blobs/, and refs/main naming the snapshot."""
    folder = root / ("models--" + repo.replace("/", "--"))
    for file_name, gguf in files.items():
        digest = _sha256(gguf)
        _place(gguf, folder / "blobs" / digest, link=link)
        target = folder / "snapshots" / commit / file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        depth = len(Path(file_name).parts) + 1  # snapshots/<commit>/<file...> back up to the repo folder
        if not target.is_symlink():
            target.symlink_to(Path(*[".."] * depth) / "blobs" / digest)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return folder


def lmstudio_model(root: Path, publisher: str, model: str, files: dict[str, Path], *, link: bool = False) -> Path:
    """root = ~/.lmstudio/models."""
    folder = root / publisher / model
    for file_name, gguf in files.items():
        _place(gguf, folder / file_name, link=link)
    return folder


def clean_store_env(monkeypatch, home: Path) -> None:
    """HOME = home and no store variable set: the stores are found where they are by default."""
    monkeypatch.setenv("HOME", str(home))
    for name in ("OLLAMA_MODELS", "HF_HOME", "HF_HUB_CACHE", "LLAMA_CACHE", "SPECLLM_MODEL_PATH", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
