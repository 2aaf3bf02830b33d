"""The local model stores: the tiny models laid out as Ollama, the Hugging Face and llama.cpp
caches, LM Studio and plain folders write them, in a temporary HOME; found, described from
their headers, grouped by vocabulary and run by name."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import gguf
import pytest

from helpers import assert_no_internal_error, generate, invoke
from store_layouts import clean_store_env, hub_repo, lmstudio_model, ollama_model
from tiny_models import N_LAYER, N_PADDING, TARGET_VOCAB, TinyModels

from specllm import registry
from specllm.errors import RegistryError
from specllm.registry import local
from specllm.registry.gguf_header import GGUFHeaderError, read_header
from specllm.registry.listing import ROW_KEYS
from specllm.registry.model_facts import read_model_facts

EXPECTED_NAMES = {
    "ollama:tiny:latest": "ollama",
    "ollama:tiny:draft": "ollama",
    "hf:specllm/tiny-padded-GGUF": "hf",
    "hf:specllm/tiny-multi-GGUF:Q8_0": "hf",
    "hf:specllm/tiny-multi-GGUF:F32": "hf",
    "hf:specllm/tiny-llamacpp-GGUF": "llama.cpp",
    "lmstudio:specllm/tiny-other": "lmstudio",
    "lmstudio:old/tiny-old": "lmstudio",
}


@pytest.fixture
def home(tmp_path: Path, tiny: TinyModels, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME with the tiny models in every store, where each tool puts them by default."""
    home = tmp_path / "home"
    clean_store_env(monkeypatch, home)
    monkeypatch.setenv("SPECLLM_CACHE", str(tmp_path / "specllm-cache"))
    monkeypatch.setenv("SPECLLM_MODELS", str(tmp_path / "user-models.toml"))
    (tmp_path / "user-models.toml").write_text("")
    ollama = home / ".ollama" / "models"
    ollama_model(ollama, "tiny", "latest", tiny.target)
    ollama_model(ollama, "tiny", "draft", tiny.draft_other)
    hub = home / ".cache" / "huggingface" / "hub"
    hub_repo(hub, "specllm/tiny-padded-GGUF", {"tiny-padded-F32.gguf": tiny.draft_padded})
    # Several models in one repo, told apart by the quantization in their names; the vision
    # projector beside them is not a model.
    hub_repo(hub, "specllm/tiny-multi-GGUF", {
        "tiny-Q8_0.gguf": tiny.draft_other, "tiny-F32.gguf": tiny.target, "mmproj-tiny-F16.gguf": tiny.target,
    })  # fmt: skip
    hub_repo(home / ".cache" / "llama.cpp", "specllm/tiny-llamacpp-GGUF", {"tiny.gguf": tiny.draft_copy})
    lmstudio_model(home / ".lmstudio" / "models", "specllm", "tiny-other", {
        "tiny-other.gguf": tiny.other_vocab, "mmproj-tiny-other.gguf": tiny.other_vocab,
    })  # fmt: skip
    lmstudio_model(home / ".cache" / "lm-studio" / "models", "old", "tiny-old", {"tiny-old.gguf": tiny.draft_padded})
    return home


def names(scan: local.ScanResult) -> dict[str, str]:
    return {m.name: m.source for m in scan.models}


# -- finding and naming ------------------------------------------------------------------------


def test_every_store_is_found_where_its_tool_puts_it(home):
    scan = registry.scan_local_models()
    assert scan.problems == []
    assert names(scan) == EXPECTED_NAMES  # no projector, no template or params layer


def test_model_path_folders_and_the_local_section(home, tiny, tmp_path, monkeypatch):
    env_folder, toml_folder = tmp_path / "env-models", tmp_path / "toml-models"
    (env_folder / "sub").mkdir(parents=True)
    toml_folder.mkdir()
    shutil.copyfile(tiny.target, env_folder / "sub" / "mine.gguf")
    shutil.copyfile(tiny.other_vocab, toml_folder / "theirs.gguf")
    monkeypatch.setenv("SPECLLM_MODEL_PATH", f"{env_folder}{os.pathsep}{tmp_path / 'missing'}")
    (tmp_path / "user-models.toml").write_text('[local]\npaths = ["toml-models"]\n')  # relative to the file
    scan = registry.scan_local_models()
    found = names(scan)
    assert found[str(env_folder / "sub" / "mine.gguf")] == "path"
    assert found[str(toml_folder / "theirs.gguf")] == "path"
    assert [p.message for p in scan.problems] == ["no such folder"]
    assert registry.resolve_model("mine") == env_folder / "sub" / "mine.gguf"


def test_split_model_is_one_model_with_the_size_of_its_parts(tiny, tmp_path):
    """Two parts as gguf-split writes them: the metadata in the first, tensors in each."""
    reader = gguf.GGUFReader(tiny.target)
    folder = tmp_path / "split"
    folder.mkdir()
    first, second = folder / "tiny-00001-of-00002.gguf", folder / "tiny-00002-of-00002.gguf"
    tensors = list(reader.tensors)
    for path, part in ((first, tensors[: len(tensors) // 2]), (second, tensors[len(tensors) // 2 :])):
        writer = gguf.GGUFWriter(path, "llama")
        if path == first:
            for field in reader.fields.values():
                if field.name.startswith("GGUF.") or field.name == "general.architecture":
                    continue
                writer.add_key_value(field.name, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None)
        for tensor in part:
            writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    whole, split = read_model_facts(tiny.target), read_model_facts(first)
    assert split.parameters == whole.parameters
    assert split.vocab_id == whole.vocab_id
    assert split.size_bytes == first.stat().st_size + second.stat().st_size
    from specllm.registry.stores.folders import FolderStore

    problems: list = []
    assert [f.path for f in FolderStore("path", [folder]).scan(problems)] == [first]


# -- header facts and the vocabulary fingerprint -----------------------------------------------


def test_header_facts_match_what_gguf_reads(tiny):
    facts = read_model_facts(tiny.target)
    reader = gguf.GGUFReader(tiny.target)
    assert facts.architecture == "llama"
    assert facts.title == reader.fields["general.name"].contents()
    assert facts.parameters == sum(int(t.n_elements) for t in reader.tensors)
    assert facts.quantization == "F32"
    assert facts.size_bytes == tiny.target.stat().st_size
    assert facts.layers == N_LAYER
    assert facts.vocab_type == "llama"
    assert facts.vocab_size == len(TARGET_VOCAB.tokens)
    assert facts.context_length and facts.hidden_size and facts.heads and facts.heads_kv


def test_padded_vocabulary_pairs_and_another_does_not(tiny):
    ids = {name: read_model_facts(getattr(tiny, name)).vocab_id for name in
           ("target", "draft_copy", "draft_other", "draft_padded", "other_vocab")}  # fmt: skip
    assert read_model_facts(tiny.draft_padded).vocab_size == len(TARGET_VOCAB.tokens) + N_PADDING
    assert ids["target"] == ids["draft_copy"] == ids["draft_other"] == ids["draft_padded"]
    assert ids["other_vocab"] != ids["target"]


def test_fingerprint_sees_texts_not_token_types(tmp_path):
    from tiny_models import TinyVocab, build_tiny_model

    base = read_model_facts(build_tiny_model(tmp_path / "base.gguf")).vocab_id
    tokens = list(TARGET_VOCAB.tokens)
    tokens[tokens.index("~")] = "\u2581zzz"  # one text differs: that id no longer means the same
    renamed = TinyVocab(tuple(tokens), TARGET_VOCAB.types, TARGET_VOCAB.scores, TARGET_VOCAB.walkable)
    extra = TinyVocab(TARGET_VOCAB.tokens + ("\u2581zebra",), TARGET_VOCAB.types + (1,), TARGET_VOCAB.scores + (0.0,),
                      TARGET_VOCAB.walkable)  # fmt: skip
    for vocab, name in ((renamed, "renamed"), (extra, "extra")):
        assert read_model_facts(build_tiny_model(tmp_path / f"{name}.gguf", vocab=vocab)).vocab_id != base, name

    # What check does not refuse on does not split a group either: a token typed user-defined by
    # one converter and control by another.
    types = list(TARGET_VOCAB.types)
    types[TARGET_VOCAB.id("<|im_end|>")] = gguf.TokenType.USER_DEFINED
    retyped = TinyVocab(TARGET_VOCAB.tokens, tuple(types), TARGET_VOCAB.scores, TARGET_VOCAB.walkable)
    assert read_model_facts(build_tiny_model(tmp_path / "retyped.gguf", vocab=retyped)).vocab_id == base


def test_header_errors_are_typed_and_say_what_the_file_is(tiny, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny.target.read_bytes()[:5000])
    text = tmp_path / "text.gguf"
    text.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")
    with pytest.raises(GGUFHeaderError, match="truncated GGUF file"):
        read_header(truncated)
    # An interrupted download keeps the whole header and loses the end of the weights.
    cut_weights = tmp_path / "cut-weights.gguf"
    cut_weights.write_bytes(tiny.target.read_bytes()[:-100])
    with pytest.raises(GGUFHeaderError, match="its tensors need"):
        read_header(cut_weights)
    with pytest.raises(GGUFHeaderError, match="Git LFS pointer"):
        read_header(text)


# -- names ---------------------------------------------------------------------------------------


def test_references_resolve_to_the_store_files(home, tiny):
    def blob(gguf_file: Path) -> Path:
        return home / ".ollama" / "models" / "blobs" / f"sha256-{_sha(gguf_file)}"

    assert registry.resolve_model("ollama:tiny") == blob(tiny.target)
    assert registry.resolve_model("ollama:tiny:draft") == blob(tiny.draft_other)
    assert registry.resolve_model("ollama:registry.ollama.ai/library/tiny:latest") == blob(tiny.target)
    padded = registry.resolve_model("hf:specllm/tiny-padded-GGUF")
    assert padded.name == "tiny-padded-F32.gguf" and padded.read_bytes() == tiny.draft_padded.read_bytes()
    assert registry.resolve_model("hf:specllm/tiny-multi-GGUF:q8_0").name == "tiny-Q8_0.gguf"
    assert registry.resolve_model("hf:specllm/tiny-multi-GGUF/tiny-F32.gguf").name == "tiny-F32.gguf"
    assert registry.resolve_model("hf:specllm/tiny-llamacpp-GGUF").name == "tiny.gguf"
    assert registry.resolve_model("lmstudio:specllm/tiny-other").name == "tiny-other.gguf"
    assert registry.resolve_model("lmstudio:specllm/tiny-other/tiny-other.gguf").name == "tiny-other.gguf"
    assert registry.resolve_model("tiny-other") == registry.resolve_model("lmstudio:specllm/tiny-other")
    assert registry.resolve_model("tiny:draft") == blob(tiny.draft_other)


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("reference", "fragments"), [
    ("tiny", ["names 3 local models", "ollama:tiny:latest", "ollama:tiny:draft", "hf:specllm/tiny-llamacpp-GGUF"]),
    ("hf:specllm/tiny-multi-GGUF", ["names 2 local models", ":Q8_0", ":F32"]),
    ("ollama:tiny:nope", ["no model 'ollama:tiny:nope' in the ollama store", "did you mean"]),
    ("hf:specllm/tiny-multi-GGUF:Q2_K", ["no model", "hf:specllm/tiny-multi-GGUF:Q8_0"]),
    ("lmstudio:specllm/nothing", ["no model", "lmstudio:specllm/tiny-other"]),
    ("tiny-othr", ["unknown model 'tiny-othr'", "tiny-other"]),
])  # fmt: skip
def test_ambiguous_or_unknown_names_are_one_error_naming_candidates(home, reference, fragments):
    with pytest.raises(RegistryError) as raised:
        registry.resolve_model(reference)
    text = raised.value.message + " " + (raised.value.hint or "")
    for fragment in fragments:
        assert fragment in text, text


def test_store_references_are_not_paths():
    assert not registry.looks_like_path("hf:org/repo/file.gguf")
    assert registry.looks_like_path("models/file.gguf")


# -- the cache ----------------------------------------------------------------------------------


def test_scan_cache_is_used_until_the_file_changes(home, tiny, tmp_path):
    registry.scan_local_models()
    cache_file = tmp_path / "specllm-cache" / local.CACHE_FILE_NAME
    data = json.loads(cache_file.read_text())
    blob = registry.resolve_model("ollama:tiny")
    # Mark the cached entry: a rescan that returns the mark read the cache, not the file.
    data["entries"][str(blob)]["facts"]["title"] = "from the cache"
    cache_file.write_text(json.dumps(data))
    by_name = {m.name: m for m in registry.scan_local_models().models}
    assert by_name["ollama:tiny:latest"].facts.title == "from the cache"

    stat = blob.stat()
    os.utime(blob, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    by_name = {m.name: m for m in registry.scan_local_models().models}
    assert by_name["ollama:tiny:latest"].facts.title == read_header(tiny.target).metadata["general.name"]


# -- bad stores --------------------------------------------------------------------------------


def _break_manifest_json(home, tiny):
    (home / ".ollama/models/manifests/registry.ollama.ai/library/tiny/broken").write_text('{"layers": [')
    return "ollama", "broken manifest (not JSON"


def _remove_blob(home, tiny):
    manifest = ollama_model(home / ".ollama" / "models", "gone", "latest", tiny.other_vocab)
    digest = json.loads(manifest.read_text())["layers"][0]["digest"].replace(":", "-")
    (home / ".ollama/models/blobs" / digest).unlink()
    return "ollama", "is missing"


def _dangling_symlink(home, tiny):
    folder = home / ".lmstudio/models/specllm/dangling"
    folder.mkdir(parents=True)
    (folder / "gone.gguf").symlink_to(home / "nowhere.gguf")
    return "lmstudio", "dangling symlink"


def _truncated(home, tiny):
    folder = home / ".lmstudio/models/specllm/truncated"
    folder.mkdir(parents=True)
    (folder / "cut.gguf").write_bytes(tiny.target.read_bytes()[:20000])
    return "lmstudio", "truncated GGUF file"


def _text_file(home, tiny):
    hub_repo(home / ".cache/huggingface/hub", "specllm/text-GGUF", {"readme.gguf": _text(home)})
    return "hf", "not a GGUF file (it is a text file"


def _text(home):
    path = home / "text.txt"
    path.write_text("<html>404 Not Found</html>\n")
    return path


def _unreadable_folder(home, tiny, monkeypatch):
    # A folder that cannot be listed. chmod 000 does not stop root (these tests may run as root),
    # a symlink loop stops everyone: both are the same OSError to the scan.
    loop = home / "loop"
    loop.symlink_to(home / "loop")
    monkeypatch.setenv("SPECLLM_MODEL_PATH", str(loop))
    return "path", "cannot read the folder"


BAD_STORES = [_break_manifest_json, _remove_blob, _dangling_symlink, _truncated, _text_file, _unreadable_folder]


@pytest.mark.parametrize("make_bad", BAD_STORES, ids=lambda f: f.__name__.strip("_"))
def test_each_bad_store_is_one_problem_and_the_rest_is_listed(home, tiny, monkeypatch, make_bad):
    args = (home, tiny, monkeypatch) if make_bad is _unreadable_folder else (home, tiny)
    source, fragment = make_bad(*args)
    scan = registry.scan_local_models()
    assert len(scan.problems) == 1, [str(p) for p in scan.problems]
    assert scan.problems[0].source == source and fragment in scan.problems[0].message, str(scan.problems[0])
    assert names(scan) == EXPECTED_NAMES

    result = invoke("models", "list")
    assert_no_internal_error(result)
    assert result.exit_code == 0
    assert result.stderr.count("\n") == 1 and fragment.split(" (")[0] in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a folder whatever its mode")
def test_folder_without_read_permission(home, tmp_path, monkeypatch):
    closed = tmp_path / "closed"
    closed.mkdir(mode=0)
    monkeypatch.setenv("SPECLLM_MODEL_PATH", str(closed))
    try:
        scan = registry.scan_local_models()
    finally:
        closed.chmod(0o755)
    assert [p.message for p in scan.problems] == ["cannot read the folder: Permission denied"]


# -- models list -------------------------------------------------------------------------------


def test_models_list_json_has_one_object_per_model(home, tiny):
    result = invoke("models", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(EXPECTED_NAMES) <= set(rows)
    target_vocab = read_model_facts(tiny.target).vocab_id
    for name, source in EXPECTED_NAMES.items():
        row = rows[name]
        assert row["source"] == source
        assert set(ROW_KEYS) <= set(row)
        assert Path(row["path"]).is_file() and row["size_bytes"] == Path(row["path"]).stat().st_size
        assert row["architecture"] == "llama" and row["quantization"] == "F32" and row["parameters"] > 0
        assert (row["vocab_id"] == target_vocab) == (name != "lmstudio:specllm/tiny-other")
    default_target = registry.load_registry().pair("default").target
    assert rows[default_target]["source"] == "specllm" and rows[default_target]["vocab_id"] is None


def test_models_list_groups_by_vocabulary(home, tiny, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one row per model, names unfolded
    result = invoke("models", "list")
    assert result.exit_code == 0, result.output
    target_vocab = read_model_facts(tiny.target).vocab_id
    other_vocab = read_model_facts(tiny.other_vocab).vocab_id
    out = result.stdout
    assert f"vocabulary {target_vocab}" in out and "these models can pair" in out
    same_group = out[out.index(f"vocabulary {target_vocab}"): out.index(f"vocabulary {other_vocab}")]
    assert "ollama:tiny:draft" in same_group and "lmstudio:old/tiny-old" in same_group
    assert "lmstudio:specllm/tiny-other" not in same_group


# -- run by name -------------------------------------------------------------------------------


def test_generate_by_store_names_equals_generate_by_paths(home, tiny):
    by_name = generate("-m", "ollama:tiny", "-md", "hf:specllm/tiny-padded-GGUF", "--temp", "0", "-n", "24", "the cat")
    by_path = generate("-m", tiny.target, "-md", tiny.draft_padded, "--temp", "0", "-n", "24", "the cat")
    assert by_name.exit_code == 0, by_name.output
    assert by_path.exit_code == 0, by_path.output
    assert by_name.stdout == by_path.stdout and by_name.stdout.strip()


def test_generate_without_a_draft_names_the_local_models_that_could_draft(home, tiny):
    # The padded model has the most parameters (its padding rows): every other tiny model is smaller.
    result = generate("-m", tiny.draft_padded, "--temp", "0", "-n", "4", "the cat")
    assert result.exit_code == 0, result.output
    note = [line for line in result.stderr.splitlines() if "could draft for this target" in line]
    assert len(note) == 1, result.stderr
    assert "with its vocabulary" in note[0] and "through text" in note[0]
    assert f"specllm drafts {tiny.draft_padded}" in note[0]
    # Not when a draft is named, nor when nothing would be drafted anyway.
    for extra in (["-md", str(tiny.draft_other)], ["--mode", "none"]):
        quiet = generate("-m", tiny.draft_padded, *extra, "--temp", "0", "-n", "4", "the cat")
        assert quiet.exit_code == 0 and "could draft" not in quiet.stderr, quiet.output


def test_pairs_may_name_store_references(home, tiny, tmp_path):
    (tmp_path / "user-models.toml").write_text(
        '[pairs.mine]\ntarget = "ollama:tiny:latest"\ndraft = "hf:specllm/tiny-padded-GGUF"\nk = 3\n'
    )
    pair, target, draft = registry.resolve_pair("mine")
    assert pair.k == 3 and target.read_bytes() == tiny.target.read_bytes()
    assert draft.name == "tiny-padded-F32.gguf"
    (tmp_path / "user-models.toml").write_text('[pairs.bad]\ntarget = "ollama:a/b/c/d"\ndraft = "x.gguf"\n')
    with pytest.raises(RegistryError, match="not a model in the registry, a store reference or a GGUF path"):
        registry.load_registry()


def test_ggml_type_sizes_agree_with_gguf_py():
    from gguf.constants import GGML_QUANT_SIZES

    from specllm.registry.gguf_header import GGML_TYPE_SIZES

    for kind, sizes in GGML_TYPE_SIZES.items():
        assert tuple(GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]) == sizes, kind


def test_store_variables_move_the_stores(tmp_path, tiny, monkeypatch):
    home = tmp_path / "empty-home"
    clean_store_env(monkeypatch, home)
    monkeypatch.setenv("SPECLLM_CACHE", str(tmp_path / "specllm-cache"))
    monkeypatch.setenv("SPECLLM_MODELS", str(tmp_path / "user-models.toml"))
    (tmp_path / "user-models.toml").write_text("")
    ollama_model(tmp_path / "ollama", "moved", "v1", tiny.target)
    hub_repo(tmp_path / "hf-home" / "hub", "specllm/moved-GGUF", {"sub/moved.gguf": tiny.draft_other})
    hub_repo(tmp_path / "llama-cache", "specllm/moved-too-GGUF", {"moved.gguf": tiny.draft_padded})
    lmstudio_model(tmp_path / "xdg-cache" / "lm-studio" / "models", "pub", "moved", {"moved.gguf": tiny.other_vocab})
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("LLAMA_CACHE", str(tmp_path / "llama-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    # LM Studio's "Models Directory" setting.
    lmstudio_model(tmp_path / "lms-chosen", "pub", "chosen", {"chosen.gguf": tiny.target})
    (home / ".lmstudio").mkdir(parents=True)
    (home / ".lmstudio" / "settings.json").write_text(json.dumps({"downloadsFolder": str(tmp_path / "lms-chosen")}))
    scan = registry.scan_local_models()
    assert scan.problems == []
    assert names(scan) == {"ollama:moved:v1": "ollama", "hf:specllm/moved-GGUF": "hf",
                           "hf:specllm/moved-too-GGUF": "llama.cpp", "lmstudio:pub/moved": "lmstudio",
                           "lmstudio:pub/chosen": "lmstudio"}  # fmt: skip
    assert registry.resolve_model("hf:specllm/moved-GGUF/sub/moved.gguf").name == "moved.gguf"


def test_a_manifest_whose_blob_is_gone_is_one_error_line(home, tiny):
    manifest = ollama_model(home / ".ollama" / "models", "gone", "latest", tiny.other_vocab)
    (home / ".ollama/models/blobs" / json.loads(manifest.read_text())["layers"][0]["digest"].replace(":", "-")).unlink()
    result = generate("-m", "ollama:gone", "the cat")
    assert_no_internal_error(result)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: 'ollama:gone': the model blob sha256-") and "is missing" in result.stderr


@pytest.mark.real_models
def test_real_models_in_the_stores_group_by_vocabulary(tmp_path, monkeypatch):
    """The default pair's real files, linked into an Ollama store and a Hugging Face cache."""
    from helpers import cached_default_pair

    target, draft = cached_default_pair()
    home = tmp_path / "home"
    clean_store_env(monkeypatch, home)
    monkeypatch.setenv("SPECLLM_CACHE", str(tmp_path / "specllm-cache"))
    ollama_model(home / ".ollama/models", "qwen2.5-coder", "1.5b", target, link=True)
    hub_repo(home / ".cache/huggingface/hub", "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF", {draft.name: draft}, link=True)
    by_name = {m.name: m for m in registry.scan_local_models().models}
    big, small = by_name["ollama:qwen2.5-coder:1.5b"], by_name["hf:Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF"]
    assert big.facts.vocab_id == small.facts.vocab_id and big.facts.vocab_size == 151936
    assert (big.facts.architecture, big.facts.quantization, big.facts.layers) == ("qwen2", "Q4_K_M", 28)
    assert big.facts.parameters > small.facts.parameters
    assert registry.resolve_model("qwen2.5-coder:1.5b").resolve() == target.resolve()
