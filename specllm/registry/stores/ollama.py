"""Ollama's model store: manifests that point at content-addressed blobs.

    $OLLAMA_MODELS, else ~/.ollama/models (and /usr/share/ollama/.ollama/models, the Linux service's)
      manifests/<registry>/<namespace>/<model>/<tag>   JSON: {"layers": [{"mediaType", "digest"}, ...]}
      blobs/sha256-<hex>                               the layer whose digest is sha256:<hex>

The layer with mediaType application/vnd.ollama.image.model is the GGUF; projector, adapter,
template, params and license layers are not models. As in Ollama's server/modelpath.go, a
reference is [registry/][namespace/]model[:tag] with the defaults registry.ollama.ai, library
and latest, and a name is shown without the defaults: registry.ollama.ai/library/qwen2.5:0.5b
is `qwen2.5:0.5b`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .base import Found, Problem, env_path, existing_dirs, list_dir

SOURCE = "ollama"
PREFIX = "ollama:"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
DEFAULT_REGISTRY, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
SERVICE_STORE = Path("/usr/share/ollama/.ollama/models")


class ManifestError(Exception):
    """A manifest that cannot be used: not JSON, no model layer, or its blob is missing."""


@dataclass(frozen=True)
class OllamaRef:
    registry: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> Optional[OllamaRef]:
        """`[registry/][namespace/]model[:tag]` (after the `ollama:` prefix); None if malformed."""
        path, _, tag = text.partition(":")
        parts = [p for p in path.split("/")]
        if not all(parts) or len(parts) > 3 or (tag == "" and text.endswith(":")) or "/" in tag:
            return None
        parts = [DEFAULT_REGISTRY, DEFAULT_NAMESPACE][: 3 - len(parts)] + parts
        return cls(parts[0], parts[1], parts[2], tag or DEFAULT_TAG)

    @property
    def display(self) -> str:
        """The shortest form that parses back to this reference."""
        if self.registry != DEFAULT_REGISTRY:
            path = f"{self.registry}/{self.namespace}/{self.model}"
        elif self.namespace != DEFAULT_NAMESPACE:
            path = f"{self.namespace}/{self.model}"
        else:
            path = self.model
        return f"{path}:{self.tag}"

    def manifest(self, root: Path) -> Path:
        return root / "manifests" / self.registry / self.namespace / self.model / self.tag


class OllamaStore:
    source = SOURCE

    def roots(self) -> list[Path]:
        named = env_path("OLLAMA_MODELS")
        return [named] if named else [Path.home() / ".ollama" / "models", SERVICE_STORE]

    def scan(self, problems: list[Problem]) -> list[Found]:
        found = []
        for root in existing_dirs(self.roots()):
            if not (root / "manifests").is_dir():
                continue
            for manifest in _manifest_files(root / "manifests", problems):
                parts = manifest.relative_to(root / "manifests").parts
                ref = OllamaRef(*parts)
                try:
                    blob = model_blob(root, manifest)
                except ManifestError as e:
                    problems.append(Problem(SOURCE, manifest, str(e)))
                    continue
                if blob is not None:
                    found.append(self._found(ref, blob))
        return found

    def find(self, text: str) -> list[Found]:
        """The model a reference names, in the first store that has its manifest."""
        ref = OllamaRef.parse(text)
        if ref is None:
            return []
        for root in existing_dirs(self.roots()):
            manifest = ref.manifest(root)
            if manifest.is_file():
                blob = model_blob(root, manifest)  # ManifestError: the caller reports it
                return [self._found(ref, blob)] if blob else []
        return []

    @staticmethod
    def _found(ref: OllamaRef, blob: Path) -> Found:
        return Found(SOURCE, PREFIX + ref.display, blob, aliases=(ref.display, ref.model))


def model_blob(root: Path, manifest: Path) -> Optional[Path]:
    """The GGUF blob of a manifest; None when it has no model layer (an adapter-only manifest)."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read the manifest: {getattr(e, 'strerror', None) or e}") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"broken manifest (not JSON: {e.msg} at line {e.lineno})") from None
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        raise ManifestError("broken manifest (no 'layers' list)")
    digests = [layer.get("digest") for layer in layers if isinstance(layer, dict) and layer.get("mediaType") == MODEL_MEDIA_TYPE]
    if not digests:
        return None
    digest = digests[0]
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise ManifestError(f"broken manifest (model layer digest {digest!r})")
    blob = root / "blobs" / digest.replace(":", "-", 1)
    if not blob.is_file():
        raise ManifestError(f"the model blob {blob.name} is missing from {blob.parent}")
    return blob


def _manifest_files(manifests: Path, problems: list[Problem]) -> list[Path]:
    """manifests/<registry>/<namespace>/<model>/<tag>: exactly four levels down."""
    level = [manifests]
    for depth in range(4):
        below = []
        for folder in level:
            for entry in list_dir(folder, SOURCE, problems):
                is_dir = entry.is_dir()
                if (depth < 3 and is_dir) or (depth == 3 and not is_dir and not entry.name.startswith(".")):
                    below.append(Path(entry.path))
        level = below
    return level
