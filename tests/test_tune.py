"""Issue 25 with PyTorch: the dequantized draft's forward against llama.cpp, training lowers the
KL, the exported adapter does in llama.cpp what PyTorch predicts, merge + requantize, resume, and
the command end to end. Skipped without torch (the [tune] extra)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the [tune] extra (PyTorch) is not installed")
import gguf  # noqa: E402

from helpers import PROMPT, assert_clean_error, check_real_forward, invoke  # noqa: E402
from specllm import llama  # noqa: E402
from specllm.engine import Engine, EngineConfig  # noqa: E402
from specllm.tune.correctness import MAX_RELATIVE_DIFF, compare_logits, llama_logits  # noqa: E402
from specllm.tune.data import DataSettings, generate_data, plan  # noqa: E402
from specllm.tune.export import merged_updates, read_adapter, write_adapter, write_merged  # noqa: E402
from specllm.tune.forward import DraftModel  # noqa: E402
from specllm.tune.train import Checkpoint, TrainSettings, checkpoint_identity, mean_losses, train  # noqa: E402
from specllm.tune.weights import GgufWeights  # noqa: E402

TEXTS = ["the of and to in is", "it you that he was for", "on are as with his they", "at be this have from",
         "or one had by word but", "not what all were we when"]
# float32 everywhere: PyTorch and llama.cpp differ only by summation order.
F32_TOLERANCE = 1e-3


def qwen2_variant(source: Path, destination: Path, n_head_kv: int = 2) -> Path:
    """The tiny llama model rewritten as Qwen2 (the real draft's architecture): neox rotary
    positions, q/k/v biases, grouped-query attention (fewer k/v heads) and a tied output matrix."""
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(destination, "qwen2")
    rng = np.random.default_rng(7)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        value = n_head_kv if field.name == "llama.attention.head_count_kv" else field.contents()
        writer.add_key_value(field.name.replace("llama.", "qwen2.", 1), value, field.types[0], sub_type=sub_type)
    head_dim = 64 // 4
    for t in reader.tensors:
        data = np.array(t.data, dtype=np.float32)
        if t.name == "output.weight":
            continue  # tied to token_embd, as in Qwen2.5-0.5B
        if t.name.endswith(("attn_k.weight", "attn_v.weight")):
            data = data[: n_head_kv * head_dim]
        writer.add_tensor(t.name, data)
        if t.name.endswith(("attn_q.weight", "attn_k.weight", "attn_v.weight")):
            bias = 0.3 * rng.standard_normal(data.shape[0]).astype(np.float32)
            writer.add_tensor(t.name.replace(".weight", ".bias"), bias)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return destination


@pytest.fixture(scope="module")
def qwen2(tiny, tmp_path_factory) -> Path:
    return qwen2_variant(tiny.draft_other, tmp_path_factory.mktemp("qwen2") / "qwen2.gguf")


@pytest.fixture(scope="module")
def samples(tiny, tmp_path_factory):
    s = DataSettings(target=tiny.target.name, target_bytes=tiny.target.stat().st_size, top_k=8, max_tokens=24,
                     temp=1.0, samples=1)
    with Engine(EngineConfig(target=str(tiny.target), mode="none", ctx_size=256, threads=1)) as engine:
        return generate_data(engine, tmp_path_factory.mktemp("data") / "d.jsonl", s, plan(TEXTS, 5, s))


def tokens_of(path: Path) -> list[int]:
    with llama.Model(path, vocab_only=True) as model:
        return model.vocab.tokenize(PROMPT + " " + PROMPT)


def torch_logits(model: DraftModel, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model.logits(torch.tensor(tokens)).numpy()


@pytest.mark.parametrize("which", ["llama", "qwen2"])
def test_the_dequantized_forward_matches_llama_cpp(tiny, qwen2, which):
    path = tiny.draft_other if which == "llama" else qwen2
    tokens = tokens_of(path)
    with llama.Model(path) as model:
        check = compare_logits(torch_logits(DraftModel(GgufWeights(path)), tokens), llama_logits(model, tokens, threads=1))
    assert check.max_abs_diff < F32_TOLERANCE * check.logit_std, check
    assert check.ok
    assert check.argmax_agreement == 1.0


def test_a_wrong_rotary_style_is_caught_by_the_guard(qwen2):
    """What a loader that permutes Q/K wrongly does: the guard's tolerance must see it."""
    model = DraftModel(GgufWeights(qwen2))
    object.__setattr__(model.settings, "rope_style", "norm")  # Qwen2 uses neox
    tokens = tokens_of(qwen2)
    with llama.Model(qwen2) as m:
        check = compare_logits(torch_logits(model, tokens), llama_logits(m, tokens, threads=1))
    assert check.relative_diff > MAX_RELATIVE_DIFF and not check.ok


def test_a_few_training_steps_lower_the_kl(tiny, samples):
    torch.manual_seed(0)
    model = DraftModel(GgufWeights(tiny.draft_other), rank=4, alpha=8)
    train_set = [s for s in samples if s.split == "train"]
    before = mean_losses(model, train_set)
    train(model, train_set, TrainSettings(rank=4, alpha=8, lr=3e-3, epochs=2, batch=2))
    after = mean_losses(model, train_set)
    assert after["kl"] < 0.8 * before["kl"], (before, after)  # 10 steps


def lora_of(model: DraftModel) -> dict:
    return {name: (l.lora_a.detach().numpy().copy(), l.lora_b.detach().numpy().copy())
            for name, l in model.lora_layers().items()}


@pytest.mark.parametrize("which", ["llama", "qwen2"])
def test_the_exported_adapter_changes_llama_cpps_logits_as_torch_predicts(tiny, qwen2, which, tmp_path):
    path = tiny.draft_other if which == "llama" else qwen2
    torch.manual_seed(1)
    model = DraftModel(GgufWeights(path), rank=4, alpha=8)
    with torch.no_grad():
        for layer in model.lora_layers().values():
            layer.lora_b.normal_(0, 0.05)
    write_adapter(tmp_path / "a.gguf", which, 8, lora_of(model))
    tokens = tokens_of(path)
    ours, base = torch_logits(model, tokens), torch_logits(DraftModel(GgufWeights(path)), tokens)
    with llama.Model(path) as m:
        adapter = llama.LoraAdapter(m, tmp_path / "a.gguf")
        theirs, plain = llama_logits(m, tokens, adapter=adapter, threads=1), llama_logits(m, tokens, threads=1)
    assert np.abs(ours - base).max() > 1.0  # the adapter matters...
    assert np.abs(ours - theirs).max() < F32_TOLERANCE * theirs.std()  # ...and both agree on how
    assert np.abs(theirs - plain).max() > 1.0


def test_merge_and_requantize_round_trip(tiny, tmp_path):
    torch.manual_seed(2)
    model = DraftModel(GgufWeights(tiny.draft_other), rank=4, alpha=8)
    with torch.no_grad():
        for layer in model.lora_layers().values():
            layer.lora_b.normal_(0, 0.05)
    write_adapter(tmp_path / "a.gguf", "llama", 8, lora_of(model))
    arch, alpha, lora = read_adapter(tmp_path / "a.gguf")
    assert (arch, alpha) == ("llama", 8.0)
    tokens = tokens_of(tiny.draft_other)
    ours = torch_logits(model, tokens)
    # The draft's own type (float32 for the tiny models): the merged file is the adapted draft.
    assert write_merged(tiny.draft_other, merged_updates(alpha, lora), tmp_path / "m.gguf") == 0
    with llama.Model(tmp_path / "m.gguf") as m:
        merged = llama_logits(m, tokens, threads=1)
    assert np.abs(merged - ours).max() < F32_TOLERANCE * merged.std()
    # Written to another type (F16: quantized types' matmuls trap on this CI's VM, whose CPU
    # advertises AMX that its kernel does not allow): close, and the same greedy choices.
    write_merged(tiny.draft_other, merged_updates(alpha, lora), tmp_path / "f16.gguf", ftype=1)
    with llama.Model(tmp_path / "f16.gguf") as m:
        assert m.metadata("general.file_type") == "1"
        f16 = llama_logits(m, tokens, threads=1)
    assert compare_logits(ours, f16).argmax_agreement > 0.9


def test_an_interrupted_training_resumes_to_the_same_adapter(tiny, samples, tmp_path):
    train_set = [s for s in samples if s.split == "train"]
    s = TrainSettings(rank=4, alpha=8, lr=3e-3, epochs=2, batch=2)

    def fresh() -> DraftModel:
        torch.manual_seed(0)
        return DraftModel(GgufWeights(tiny.draft_other), rank=4, alpha=8)

    whole = fresh()
    train(whole, train_set, s)
    checkpoint = Checkpoint(tmp_path / "c.ckpt", checkpoint_identity(s, "draft", train_set))

    def stop_at_3(report):
        if report.step == 3:
            raise KeyboardInterrupt

    first = fresh()
    with pytest.raises(KeyboardInterrupt):
        train(first, train_set, s, checkpoint, stop_at_3)
    resumed = DraftModel(GgufWeights(tiny.draft_other), rank=4, alpha=8)  # another initialisation
    steps = []
    train(resumed, train_set, s, checkpoint, lambda r: steps.append(r.step))
    assert steps[0] == 4
    for name, value in whole.lora_state().items():
        assert torch.allclose(resumed.lora_state()[name], value, atol=1e-6), name


def test_tune_draft_end_to_end_raises_acceptance_and_resumes(tiny, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n\n".join(TEXTS * 2))
    args = ("tune-draft", tiny.target, tiny.draft_other, "--prompts", prompts, "-o", tmp_path / "lora.gguf", "-n", 32,
            "--rank", 8, "--lr", 3e-3, "--epochs", 3, "--batch", 2, "-t", 1, "--merge", "--json")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    acc = report["acceptance"]
    assert acc["draft+lora"]["acceptance_rate"] > acc["draft"]["acceptance_rate"]
    assert acc["merged"]["acceptance_rate"] == pytest.approx(acc["draft+lora"]["acceptance_rate"], abs=0.05)
    misses = acc["draft+lora"]["misses_by_target_confidence"]
    assert misses["misses"] == acc["draft+lora"]["positions"] - acc["draft+lora"]["matches"]
    assert report["losses_after"]["train"]["kl"] < report["losses_before"]["train"]["kl"]
    assert report["logits_check"]["relative_diff"] < F32_TOLERANCE
    assert (tmp_path / "lora.gguf").exists() and (tmp_path / "lora-merged.gguf").exists()
    # A rerun finds the data and the finished checkpoint: nothing to generate, nothing to train.
    again = json.loads(invoke(*args).stdout)
    assert again["steps"] == 0 and again["acceptance"]["draft+lora"] == acc["draft+lora"]
    # Without --json the report shows where the misses are, by the target's own probability.
    shown = invoke(*args[:-1])
    assert shown.exit_code == 0 and "misses by the target's probability for its token" in shown.stderr


def test_a_draft_of_another_vocabulary_is_refused_in_one_line(tiny, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n\n".join(TEXTS))
    result = invoke("tune-draft", tiny.target, tiny.other_vocab, "--prompts", prompts, "-o", tmp_path / "x.gguf")
    assert_clean_error(result, 1, "cannot draft for")
    assert "--cross-vocab" in result.stderr  # which tunes it on text: test_tune_crossfamily.py


@pytest.mark.real_models
def test_the_real_drafts_dequantized_forward_matches_llama_cpp(real_draft_path):
    """Qwen2.5-Coder-0.5B Q4_K_M: measured max |diff| 0.69, mean 0.056, spread 2.8 (correctness.py)."""
    check = check_real_forward(real_draft_path)  # raises beyond the tolerance
    assert check.argmax_agreement > 0.95, check


def test_the_training_losses_are_measured_on_an_even_sample_of_the_training_set():
    from specllm.tune.run import TRAIN_LOSS_SAMPLES, loss_sample

    assert loss_sample(list(range(10))) == list(range(10))
    many = loss_sample(list(range(200)))
    assert len(many) == TRAIN_LOSS_SAMPLES and many[0] == 0 and many[-1] >= 190
    assert len(loss_sample(list(range(41)))) <= TRAIN_LOSS_SAMPLES
