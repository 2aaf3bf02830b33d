"""Where specllm keeps its files: the one place that reads SPECLLM_CACHE, SPECLLM_MODELS and XDG_*.

    cache   $SPECLLM_CACHE, else $XDG_CACHE_HOME/specllm, else ~/.cache/specllm
            (Windows: %LOCALAPPDATA%\\specllm\\cache). Holds models/ (the model cache),
            costs.json (auto mode's cost profiles) and llama.cpp-VERSION/ (the build of
            scripts/compare-llama-cpp): one setting moves them all.
    config  $XDG_CONFIG_HOME/specllm, else ~/.config/specllm (Windows: %APPDATA%\\specllm).
            Holds the user's models.toml; $SPECLLM_MODELS names another file instead.

Every value is computed at call time, so a change of the environment (tests, a script that
sets SPECLLM_CACHE) takes effect at once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from .errors import RegistryError

APP_NAME = "specllm"
REGISTRY_FILE_NAME = "models.toml"


def _env_path(name: str) -> Optional[Path]:
    # An empty variable counts as unset, as the XDG base directory spec asks.
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """The root of everything specllm downloads, builds or measures."""
    named = _env_path("SPECLLM_CACHE")
    if named:
        return named
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / APP_NAME / "cache"
    return (_env_path("XDG_CACHE_HOME") or Path.home() / ".cache") / APP_NAME


def config_dir() -> Path:
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / APP_NAME
    return (_env_path("XDG_CONFIG_HOME") or Path.home() / ".config") / APP_NAME


def models_dir() -> Path:
    """Verified GGUF files fetched from a registry source (see specllm/registry/cache.py)."""
    return cache_dir() / "models"


def cost_profile_path() -> Path:
    """Auto mode's measured decode costs, per models and settings."""
    return cache_dir() / "costs.json"


def llama_cpp_dir(version: str) -> Path:
    """scripts/compare-llama-cpp's unpacked llama-cpp-python sdist and its builds."""
    return cache_dir() / f"llama.cpp-{version}"


def user_registry_path() -> Optional[Path]:
    """$SPECLLM_MODELS (which must exist), else models.toml in the config dir when there is one."""
    named = _env_path("SPECLLM_MODELS")
    if named:
        if not named.is_file():
            raise RegistryError(f"SPECLLM_MODELS names {named}, which is not a file")
        return named
    path = config_dir() / REGISTRY_FILE_NAME
    return path if path.is_file() else None


def shipped_registry_path() -> Path:
    """models.toml next to the package (an installed wheel), else at the top of a checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / REGISTRY_FILE_NAME, package.parent / REGISTRY_FILE_NAME):
        if candidate.is_file():
            return candidate
    raise RegistryError(f"specllm's {REGISTRY_FILE_NAME} is missing from {package}", hint="reinstall specllm")
