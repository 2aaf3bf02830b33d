"""Build llama.cpp's `llama-completion` and `llama-speculative-simple` from the llama.cpp that
specllm runs on: the one vendored in the llama-cpp-python release pinned in pyproject.toml.

The release's sdist is fetched with `pip download --no-binary llama-cpp-python` into the cache
dir (specllm's cache: paths.llama_cpp_dir(VERSION), or --cache-dir / $SPECLLM_LLAMA_CPP_CACHE),
unpacked once, and only the two programs are built from its vendor/llama.cpp, statically, in
build-<hash>/ (one dir per set of cmake flags, so a CPU and a CUDA build live side by side).
$CMAKE_ARGS is passed to cmake as llama-cpp-python's own build does. Later runs reuse all of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Optional

from .util import Failure, first_error, last_line, log, require_specllm

TARGETS = ("llama-completion", "llama-speculative-simple")
# LLAMA_CURL is gone from this llama.cpp (a deprecation warning); LLAMA_OPENSSL is what now pulls
# in a TLS library, and models here are local files. Tests, server and web UI are not needed.
BASE_CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_OPENSSL=OFF",
)
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def pinned_version(pyproject: Path = PYPROJECT) -> str:
    try:
        match = re.search(r'"llama-cpp-python==([^";\s]+)"', pyproject.read_text(encoding="utf-8"))
    except OSError:
        match = None
    if not match:
        raise Failure(f"no llama-cpp-python==VERSION pin found in {pyproject}; pass --llama-cpp-python VERSION")
    return match.group(1)


def default_cache_dir(version: str) -> Path:
    """$SPECLLM_LLAMA_CPP_CACHE, else llama.cpp-VERSION in specllm's cache (one setting moves both)."""
    named = os.environ.get("SPECLLM_LLAMA_CPP_CACHE")
    if named:
        return Path(named).expanduser()
    require_specllm()
    from specllm.paths import llama_cpp_dir

    return llama_cpp_dir(version)


def build(version: str, cache: Optional[Path] = None, jobs: int = os.cpu_count() or 1) -> Path:
    """The directory holding both programs, built (or brought up to date) for this version."""
    cache = cache.expanduser() if cache else default_cache_dir(version)
    cache.mkdir(parents=True, exist_ok=True)
    return build_llama_cpp(llama_cpp_source(cache, version), cache, jobs)


def llama_cpp_source(cache: Path, version: str) -> Path:
    """vendor/llama.cpp of the llama-cpp-python sdist, downloaded and unpacked once."""
    source = cache / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if (source / "CMakeLists.txt").is_file():
        return source
    sdist = download_sdist(cache / "sdist", version)
    log(f"unpacking {sdist.name}")
    # Into a scratch dir first, so that an interrupted unpack is never taken for a complete one.
    with tempfile.TemporaryDirectory(dir=cache, prefix="unpacking-") as scratch:
        unpack(sdist, Path(scratch))
        unpacked = Path(scratch) / source.parent.parent.name
        if not (unpacked / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
            raise Failure(f"{sdist} has no {source.parent.parent.name}/vendor/llama.cpp")
        shutil.rmtree(source.parent.parent, ignore_errors=True)
        unpacked.rename(source.parent.parent)
    return source


def unpack(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
            return
        for member in tar.getmembers():  # a Python without extraction filters: check paths by hand
            if not (dest / member.name).resolve().is_relative_to(dest.resolve()):
                raise Failure(f"{archive}: unsafe path in the archive: {member.name}")
        tar.extractall(dest)


def sdist_download_command(version: str, dest: Path) -> list[str]:
    # --no-binary for this package only: pip still needs the build backend (as wheels) to read
    # the sdist's metadata, and building the backend itself from source gains nothing.
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
            f"llama-cpp-python=={version}", "-d", str(dest)]


def download_sdist(dest: Path, version: str) -> Path:
    name = f"llama_cpp_python-{version}.tar.gz"
    if (dest / name).is_file():
        return dest / name
    dest.mkdir(parents=True, exist_ok=True)
    log(f"downloading the llama-cpp-python {version} sdist into {dest}")
    done = subprocess.run(sdist_download_command(version, dest), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace")
    if done.returncode != 0 or not (dest / name).is_file():
        raise Failure(f"pip download of llama-cpp-python=={version} failed: {last_line(done.stdout)}")
    return dest / name


def cmake_flags() -> list[str]:
    return [*BASE_CMAKE_FLAGS, *shlex.split(os.environ.get("CMAKE_ARGS", ""))]


def build_llama_cpp(source: Path, cache: Path, jobs: int) -> Path:
    """Configure once per set of flags, then let cmake bring the two programs up to date."""
    flags = cmake_flags()
    build_dir = cache / ("build-" + hashlib.sha256("\n".join(flags).encode()).hexdigest()[:10])
    configured = build_dir / "specllm-configured.json"
    if not configured.is_file():
        log(f"configuring llama.cpp in {build_dir}: {' '.join(flags)}")
        run_logged("configuring llama.cpp", ["cmake", "-S", str(source), "-B", str(build_dir), *flags],
                   build_dir / "configure.log")
        configured.write_text(json.dumps({"flags": flags}) + "\n", encoding="utf-8")
    started = time.monotonic()
    log(f"building {' and '.join(TARGETS)} (log: {build_dir / 'build.log'})")
    run_logged("building llama.cpp", ["cmake", "--build", str(build_dir), "--config", "Release", "--parallel",
                                      str(jobs), "--target", *TARGETS], build_dir / "build.log")
    log(f"llama.cpp is up to date ({time.monotonic() - started:.0f} s)")
    for bin_dir in (build_dir / "bin", build_dir / "bin" / "Release"):
        if all((bin_dir / t).is_file() or (bin_dir / f"{t}.exe").is_file() for t in TARGETS):
            return bin_dir
    raise Failure(f"the build finished but {' / '.join(TARGETS)} are not in {build_dir / 'bin'}")


def run_logged(what: str, cmd: list[str], log_path: Path) -> None:
    if shutil.which(cmd[0]) is None:
        raise Failure(f"{cmd[0]} not found on PATH (needed to build llama.cpp)")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise Failure(f"{what} failed (exit {code}): "
                      f"{first_error(log_path.read_text(encoding='utf-8', errors='replace'))} (log: {log_path})")
