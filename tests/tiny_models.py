"""Tiny GGUF models, written by hand, that the unit tests load through the real llama.cpp.

Why not random weights: llama.cpp is not batch-invariant (a position's logits differ in the
last bits between a one-token decode and a batched one), and the tests assert that greedy
speculative output equals plain greedy output exactly. With random weights the top two logits
are sometimes nearly tied and the argmax can flip with the batch size. So the weights are
designed: the model is a "trigram machine" whose next greedy token is a table lookup on
(current token, one bit of the previous token), scored on a lattice so that every top-1 logit
beats the runner-up by a fixed margin.

How the network computes it (residual stream of N_EMBD dims, see the DIM_* constants):

- The token embedding holds a constant, the token's own sign bit sigma(t) = +-1 and a random
  unit code e(t).
- Layer 0, attention head 0 attends by position only: its queries and keys come from the
  constant dimension and are pre-rotated so that, after RoPE, the score peaks sharply at the
  previous position. It copies the previous token's sign bit into DIM_PREV. (The model's
  greedy choice therefore depends on the KV cache holding the right tokens at the right
  positions; a cache that kept a rejected draft token changes what comes next.)
- Layer 0's FFN is a lookup table with two hidden units per token c: unit (c, +) fires when
  the current token is c (gate: e(c) . e(cur) > 0.8, true only for c itself since random codes
  are nearly orthogonal) and the previous sign is + (up: 1 + sigma_prev, which is 0 or 2).
  It writes the lattice point of the successor next[c, sign] into the DIMS_Y block.
- Layer 1 has small random weights: it makes every logit depend a little on the whole context
  (so cache bugs show in the probabilities too) without moving any argmax.
- The output head scores token t by alpha * (u_t . y), where u_t is t's point on a G x G torus
  (two angles). The successor scores 2*alpha, each of its four lattice neighbours scores
  `margin` less, points further away much less: greedy choices are clear, and the temperature-1
  distribution has a top probability around 0.4-0.5 with a few real alternatives.

The successor table: a set of "walkable" tokens (whole words, '.', ',', newline) holds every
greedy successor. Restricted to them, the map (token, previous sign) -> (next token, its sign)
is a permutation without short cycles, so greedy text is a word salad that does not get stuck
on one token and, from some prompts, falls into a cycle within a few dozen tokens (which an
n-gram drafter can then predict). EOS and <|im_end|> sit on the lattice far from the
walkable words, so the standard model practically never ends on its own; `eos_rate` makes EOS
the successor of a share of the states.

The tokenizer is SentencePiece-style (tokenizer.ggml.model = "llama"): specials, 256 byte
fallback tokens <0x00>..<0xFF>, single printable ASCII characters, and the prefixes of
"\u2581word" for a list of common words, merged by score. We chose SPM over gpt2 BPE because it
needs no merge list or pre-tokenizer regex: llama.cpp merges adjacent pieces whenever the
merged text is in the vocabulary and falls back to byte tokens for anything else, so every
UTF-8 text round-trips. add_space_prefix is off so that detokenize(tokenize(text)) == text.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import TokenType

# -- vocabularies --------------------------------------------------------------------------

SPACE = "\u2581"  # SentencePiece's visible space
UNK, BOS, EOS, IM_START, IM_END = "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"
SPECIALS = (UNK, BOS, EOS, IM_START, IM_END)
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
ASCII_CHARS = (SPACE,) + tuple(chr(c) for c in range(0x21, 0x7F))

ENGLISH_WORDS = (
    "the of and to in is it you that he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which "
    "she do how their if will up other about out many then them these so some her would"
).split()
CODE_WORDS = (
    "def return import from class self if else elif for while in not and or is None True "
    "False print range len list dict str int with as try except lambda yield pass"
).split()

# llama.cpp's ChatML detector only looks for "<|im_start|>"; this is the usual ChatML Jinja.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyVocab:
    tokens: tuple[str, ...]
    types: tuple[int, ...]
    scores: tuple[float, ...]
    walkable: tuple[str, ...]  # the tokens greedy generation moves between

    @property
    def n_padding(self) -> int:
        return sum(1 for t in self.types if t == TokenType.UNUSED)

    def id(self, text: str) -> int:
        return self.tokens.index(text)

    def padded(self, n: int) -> "TinyVocab":
        """The same vocabulary with n unused tokens appended (Qwen2.5-7B pads 151936 to 152064)."""
        pads = tuple(f"[PAD{i}]" for i in range(n))
        return TinyVocab(
            self.tokens + pads, self.types + (TokenType.UNUSED,) * n, self.scores + (0.0,) * n, self.walkable
        )


def _word_pieces(words: list[str]) -> list[str]:
    """'\u2581word' and every prefix of it of two or more characters: SPM merges pairs of pieces
    left to right, so each step of the way to a whole word must itself be a token."""
    pieces: list[str] = []
    for word in words:
        full = SPACE + word
        for end in range(2, len(full) + 1):
            if full[:end] not in pieces:
                pieces.append(full[:end])
    return pieces


def make_vocab(words: list[str], *, single_chars: bool = True, bytes_first: bool = False) -> TinyVocab:
    pieces = _word_pieces(words)
    chars = list(ASCII_CHARS) if single_chars else [SPACE]
    special_types = [TokenType.UNKNOWN] + [TokenType.CONTROL] * (len(SPECIALS) - 1)
    normal = chars + pieces
    groups = [
        (list(SPECIALS), special_types, [0.0] * len(SPECIALS)),
        (list(BYTE_TOKENS), [TokenType.BYTE] * 256, [0.0] * 256),
        # Earlier (more common) pieces merge first, as with SentencePiece's log-probabilities.
        (normal, [TokenType.NORMAL] * len(normal), [-float(i) for i in range(len(normal))]),
    ]
    if bytes_first:
        groups[0], groups[1] = groups[1], groups[0]
    walkable = [SPACE + w for w in words] + [".", ",", "<0x0A>"]
    walkable = [t for t in walkable if t in chars or t in pieces or t == "<0x0A>"]
    walkable = walkable[: len(walkable) // 2 * 2]  # even: half the walkable tokens get each sign
    return TinyVocab(
        tokens=tuple(t for g in groups for t in g[0]),
        types=tuple(int(t) for g in groups for t in g[1]),
        scores=tuple(s for g in groups for s in g[2]),
        walkable=tuple(walkable),
    )


# The vocabulary of target and drafts; OTHER_VOCAB has other pieces and other ids (bytes first,
# no single-character tokens) and must be refused for token-level pairing.
TARGET_VOCAB = make_vocab(ENGLISH_WORDS)
OTHER_VOCAB = make_vocab(CODE_WORDS, single_chars=False, bytes_first=True)

# -- architecture ----------------------------------------------------------------------------

N_EMBD, N_HEAD, N_LAYER, N_CTX_TRAIN = 64, 4, 2, 4096
HEAD_DIM = N_EMBD // N_HEAD
ROPE_BASE = 10.0  # a low base gives many fast-turning rotary pairs: a sharp previous-token head
RMS_EPS = 1e-6

DIM_CONST, DIM_SIGN, DIM_PREV = 0, 1, 2
DIMS_Y = slice(3, 7)  # the successor's lattice point (cos, sin, cos, sin)
DIMS_CODE = slice(7, N_EMBD)  # the token's random code
CONST, SIGN, PREV, CODE, Y = 4.0, 2.0, 2.0, 6.0, 3.0  # magnitudes written into each block

PREV_HEAD_SCORE = 150.0  # attention logit scale of the previous-token head
GATE_SHARPNESS, GATE_THRESHOLD = 80.0, 0.8  # FFN unit fires iff code . code > threshold
MAX_CODE_OVERLAP = 0.65  # codes are redrawn until no two tokens overlap more than this
MIN_CYCLE = 8  # shortest allowed greedy cycle among the walkable states
# Layer 1 is random: it reads with weights of this size (relative to 1/sqrt(fan-in)) and
# writes with much smaller ones, so it nudges logits by context without moving any argmax.
LAYER1_READ, LAYER1_WRITE = 0.7, 0.08

# Chosen for its mix of greedy cycles (14, 15, 20 and 79 states): some prompts repeat
# themselves within 64 tokens, most do not.
TARGET_SEED = 2


def _rms(*magnitudes: float) -> float:
    return math.sqrt(sum(m * m for m in magnitudes) / N_EMBD)


RMS_EMBD = _rms(CONST, SIGN, CODE)  # the embedding alone
RMS_MID = _rms(CONST, SIGN, CODE, PREV)  # after layer 0's attention
RMS_OUT = _rms(CONST, SIGN, CODE, PREV, Y, Y)  # after layer 0's FFN (|u| = sqrt 2)


@dataclass
class _Design:
    """The hand-made part of a model: codes, signs, successor table, lattice."""

    n_real: int  # tokens that are not padding (padding comes last)
    codes: np.ndarray  # (n_tokens, code dims), unit rows; zero for padding
    signs: np.ndarray  # (n_tokens,) +-1
    successor: np.ndarray  # (n_tokens, 2): next token given previous sign + (col 0) or - (col 1)
    lattice: np.ndarray  # (n_tokens, 4) unit-circle pairs; zero rows are off the lattice
    alpha: float  # logit scale: the runner-up is `margin` below the top


def _design(vocab: TinyVocab, seed: int, margin: float, eos_rate: float) -> _Design:
    n = len(vocab.tokens)
    n_real = n - vocab.n_padding  # padding tokens are never input or output; they come last
    rng = np.random.default_rng(seed)

    code_dims = DIMS_CODE.stop - DIMS_CODE.start
    while True:
        codes = rng.standard_normal((n_real, code_dims))
        codes /= np.linalg.norm(codes, axis=1, keepdims=True)
        overlap = codes @ codes.T - np.eye(n_real)
        if overlap.max() < MAX_CODE_OVERLAP:
            break

    walk = np.array([vocab.id(t) for t in vocab.walkable])
    half = len(walk) // 2
    signs = rng.choice([-1.0, 1.0], size=n_real)
    order = rng.permutation(walk)
    plus, minus = order[:half], order[half:]
    signs[plus], signs[minus] = 1.0, -1.0
    # flip pairs each + walkable token with a - one. With next_minus = next_plus o flip, the map
    # (token, prev sign) -> (next token, token's sign) is a permutation of the walkable states:
    # of the two states that could lead to (t', s'), exactly one has a token of sign s'.
    flip = np.arange(n_real)
    flip[plus], flip[minus] = minus, plus
    successor = rng.choice(walk, size=(n_real, 2))  # non-walkable tokens lead anywhere walkable
    while True:
        successor[walk, 0] = rng.permutation(walk)
        successor[walk, 1] = successor[flip[walk], 0]
        if _shortest_cycle(successor, signs, walk) >= MIN_CYCLE:
            break
    if eos_rate > 0:
        rows, cols = np.nonzero(rng.random((len(walk), 2)) < eos_rate)
        successor[walk[rows], cols] = vocab.id(EOS)

    # Lattice: walkable tokens fill the first rows, so their neighbours (the likely samples at
    # temperature 1) are mostly words too; EOS and <|im_end|> go half the torus away from them.
    off_lattice = {vocab.id(UNK), vocab.id(BOS), vocab.id(IM_START)}
    ends = [vocab.id(EOS), vocab.id(IM_END)]
    rest = [t for t in rng.permutation(n_real) if t not in off_lattice and t not in ends and t not in walk]
    g = math.ceil(math.sqrt(len(rest) + len(walk) + len(ends)))
    points = list(range(g * g))
    far = [(g // 2) * g + g // 4, (g // 2) * g + 3 * g // 4]
    near = [p for p in points if p not in far]
    placed = list(zip(rng.permutation(walk), near)) + list(zip(ends, far))
    placed += list(zip(rest, near[len(walk) :]))
    lattice = np.zeros((n, 4))
    for token, point in placed:
        a, b = 2 * math.pi * (point // g) / g, 2 * math.pi * (point % g) / g
        lattice[token] = (math.cos(a), math.sin(a), math.cos(b), math.sin(b))

    codes = np.vstack([codes, np.zeros((n - n_real, code_dims))])
    signs = np.concatenate([signs, np.ones(n - n_real)])
    alpha = margin / (1 - math.cos(2 * math.pi / g))
    return _Design(n_real, codes, signs, successor, lattice, alpha)


def _shortest_cycle(successor: np.ndarray, signs: np.ndarray, walk: np.ndarray) -> int:
    """Length of the shortest cycle of greedy states (token, previous token's sign)."""
    seen: set[tuple[int, float]] = set()
    shortest = math.inf
    for start in [(int(t), s) for t in walk for s in (1.0, -1.0)]:
        if start in seen:
            continue
        state, length = start, 0
        while True:
            seen.add(state)
            token, prev_sign = state
            state = (int(successor[token, 0 if prev_sign > 0 else 1]), signs[token])
            length += 1
            if state == start:
                break
        shortest = min(shortest, length)
    return int(shortest)


def _weights(d: _Design, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """numpy arrays in llama.cpp's layout: a matrix is (out, in), as in y = W @ x."""
    n, real = len(d.codes), slice(0, d.n_real)

    embd = np.zeros((n, N_EMBD))
    embd[:, DIM_CONST] = CONST
    embd[real, DIM_SIGN] = SIGN * d.signs[real]
    embd[:, DIMS_CODE] = CODE * d.codes

    # Layer 0 attention, head 0: per rotary pair, q = (r, 0) and k = r (cos theta, sin theta).
    # RoPE turns the score into r^2 * cos((1 - (p - j)) theta): largest when j = p - 1.
    theta = ROPE_BASE ** (-np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
    r = math.sqrt(PREV_HEAD_SCORE * math.sqrt(HEAD_DIM) / len(theta))
    const_in = RMS_EMBD / CONST  # the normalised constant dimension reads CONST / RMS_EMBD
    wq, wk, wv, wo = (np.zeros((N_EMBD, N_EMBD)) for _ in range(4))
    wq[0:HEAD_DIM:2, DIM_CONST] = r * const_in
    wk[0:HEAD_DIM:2, DIM_CONST] = r * np.cos(theta) * const_in
    wk[1:HEAD_DIM:2, DIM_CONST] = r * np.sin(theta) * const_in
    wv[0, DIM_SIGN] = RMS_EMBD / SIGN
    wo[DIM_PREV, 0] = PREV

    # Layer 0 FFN: units (c, +) and (c, -) for every token c that can be an input.
    tokens = np.arange(d.n_real)
    n_ff = 2 * len(tokens)
    gate, up, down = np.zeros((n_ff, N_EMBD)), np.zeros((n_ff, N_EMBD)), np.zeros((N_EMBD, n_ff))
    fired = 2 * GATE_SHARPNESS * (1 - GATE_THRESHOLD)  # silu(x) = x for large x; up = 2
    for col, prev_sign in enumerate((1.0, -1.0)):
        units = 2 * tokens + col
        gate[units, DIMS_CODE] = GATE_SHARPNESS * d.codes[tokens] * RMS_MID / CODE
        gate[units, DIM_CONST] = -GATE_SHARPNESS * GATE_THRESHOLD * RMS_MID / CONST
        up[units, DIM_CONST] = RMS_MID / CONST
        up[units, DIM_PREV] = prev_sign * RMS_MID / PREV
        down[DIMS_Y, units] = (Y / fired) * d.lattice[d.successor[tokens, col]].T

    output = np.zeros((n, N_EMBD))
    output[:, DIMS_Y] = d.alpha * d.lattice * RMS_OUT / Y

    def random(rows: int, cols: int, scale: float) -> np.ndarray:
        return scale * rng.standard_normal((rows, cols)) / math.sqrt(cols)

    ones = np.ones(N_EMBD)
    return {
        "token_embd.weight": embd,
        "output_norm.weight": ones,
        "output.weight": output,
        "blk.0.attn_norm.weight": ones,
        "blk.0.attn_q.weight": wq,
        "blk.0.attn_k.weight": wk,
        "blk.0.attn_v.weight": wv,
        "blk.0.attn_output.weight": wo,
        "blk.0.ffn_norm.weight": ones,
        "blk.0.ffn_gate.weight": gate,
        "blk.0.ffn_up.weight": up,
        "blk.0.ffn_down.weight": down,
        "blk.1.attn_norm.weight": ones,
        "blk.1.attn_q.weight": random(N_EMBD, N_EMBD, LAYER1_READ),
        "blk.1.attn_k.weight": random(N_EMBD, N_EMBD, LAYER1_READ),
        "blk.1.attn_v.weight": random(N_EMBD, N_EMBD, LAYER1_READ),
        "blk.1.attn_output.weight": random(N_EMBD, N_EMBD, LAYER1_WRITE),
        "blk.1.ffn_norm.weight": ones,
        "blk.1.ffn_gate.weight": random(n_ff, N_EMBD, LAYER1_READ),
        "blk.1.ffn_up.weight": random(n_ff, N_EMBD, LAYER1_READ),
        "blk.1.ffn_down.weight": random(N_EMBD, n_ff, LAYER1_WRITE),
    }


def build_tiny_model(
    path: Path,
    *,
    seed: int = TARGET_SEED,
    vocab: TinyVocab = TARGET_VOCAB,
    noise: float = 0.0,
    noise_seed: int = 0,
    eos_rate: float = 0.0,
    margin: float = 1.5,
) -> Path:
    """Write a tiny llama-architecture GGUF. The same arguments give a byte-identical file.

    seed       chooses the model (codes, successor table, lattice, layer 1).
    vocab      TARGET_VOCAB, TARGET_VOCAB.padded(n) or OTHER_VOCAB (or your own make_vocab()).
               A padded vocabulary keeps the model of the unpadded one for the real tokens.
    noise      adds noise * rms(W) * N(0, 1) to every matrix W, drawn from noise_seed: a model
               that agrees with `seed`'s model often but not always (a draft).
    eos_rate   share of the greedy states whose successor is EOS (0: never; 1: at once).
    margin     logit gap between the greedy token and the runner-up (before noise).
    """
    design = _design(vocab, seed, margin, eos_rate)
    weights = _weights(design, np.random.default_rng([seed, 1]))
    if noise:
        noise_rng = np.random.default_rng([seed, noise_seed, 2])
        for w in weights.values():
            if w.ndim == 2:
                w += noise * np.sqrt(np.mean(w * w)) * noise_rng.standard_normal(w.shape)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(f"specllm-tiny-{seed}")
    writer.add_context_length(N_CTX_TRAIN)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(weights["blk.0.ffn_up.weight"].shape[0])
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(ROPE_BASE)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(list(vocab.tokens))
    writer.add_token_scores(list(vocab.scores))
    writer.add_token_types(list(vocab.types))
    writer.add_unk_token_id(vocab.id(UNK))
    writer.add_bos_token_id(vocab.id(BOS))
    writer.add_eos_token_id(vocab.id(EOS))
    writer.add_eot_token_id(vocab.id(IM_END))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    for name, w in weights.items():
        writer.add_tensor(name, w.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# -- the set the tests use -----------------------------------------------------------------

DRAFT_NOISE = 0.05  # gives a draft that agrees with the target on ~50-70% of greedy tokens
N_PADDING = 8


@dataclass(frozen=True)
class TinyModels:
    target: Path
    draft_copy: Path  # the target's exact weights: every greedy draft is accepted
    draft_other: Path  # target + noise: agrees on the next greedy token often, not always
    draft_padded: Path  # target's vocabulary + N_PADDING unused tokens; target + other noise
    other_vocab: Path  # another vocabulary (other pieces, other ids): cannot pair with target


def build_tiny_models(directory: Path) -> TinyModels:
    target = build_tiny_model(directory / "target.gguf")
    draft_copy = directory / "draft_copy.gguf"
    shutil.copyfile(target, draft_copy)  # build_tiny_model is deterministic; a copy is quicker
    return TinyModels(
        target=target,
        draft_copy=draft_copy,
        draft_other=build_tiny_model(directory / "draft_other.gguf", noise=DRAFT_NOISE, noise_seed=1),
        draft_padded=build_tiny_model(
            directory / "draft_padded.gguf",
            vocab=TARGET_VOCAB.padded(N_PADDING),
            noise=DRAFT_NOISE,
            noise_seed=2,
        ),
        other_vocab=build_tiny_model(directory / "other_vocab.gguf", seed=TARGET_SEED + 1, vocab=OTHER_VOCAB),
    )


# -- other architectures (tune-draft's forwards) --------------------------------------------

GEMMA3_LAYERS = 6  # llama.cpp's gemma3: layers 0-4 see a sliding window, layer 5 is global
GEMMA3_WINDOW = 4  # short, so that the tests' prompts reach past it
GEMMA3_GLOBAL_ROPE_BASE = 1000.0  # not the local layers' 10000, so a swapped base shows


def gemma3_variant(source: Path, destination: Path, n_head_kv: int = 2, seed: int = 5) -> Path:
    """A tiny llama model rewritten as Gemma3 (Gemma-3-270M's architecture): 6 layers (blk.1's
    weights repeated after blk.0's), grouped-query attention, per-head q/k norms, post-attention
    and post-FFN norms (weights around 1, as convert_hf_to_gguf.py writes Gemma's 1 + w), a
    sliding window of GEMMA3_WINDOW and a tied output. It is no designed trigram machine any
    more (the embedding is scaled, the norms differ): a model for comparing forwards, not for
    exact speculative outputs."""
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(destination, "gemma3")
    rng = np.random.default_rng(seed)
    renamed = {"llama.attention.head_count_kv": n_head_kv, "llama.block_count": GEMMA3_LAYERS,
               "llama.rope.freq_base": GEMMA3_GLOBAL_ROPE_BASE}
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        value = renamed.get(field.name, field.contents())
        writer.add_key_value(field.name.replace("llama.", "gemma3.", 1), value, field.types[0], sub_type=sub_type)
    writer.add_uint32("gemma3.attention.sliding_window", GEMMA3_WINDOW)
    writer.add_uint32("gemma3.attention.key_length", HEAD_DIM)
    writer.add_uint32("gemma3.attention.value_length", HEAD_DIM)
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    for name in ("token_embd.weight", "output_norm.weight"):
        writer.add_tensor(name, tensors[name] / (math.sqrt(N_EMBD) if name == "token_embd.weight" else 1.0))
    for i in range(GEMMA3_LAYERS):
        layer = min(i, N_LAYER - 1)
        for name, data in tensors.items():
            if not name.startswith(f"blk.{layer}."):
                continue
            if name.endswith(("attn_k.weight", "attn_v.weight")):
                data = data[: n_head_kv * HEAD_DIM]
            writer.add_tensor(name.replace(f"blk.{layer}.", f"blk.{i}.", 1), data)
        for name, n in (("attn_q_norm", HEAD_DIM), ("attn_k_norm", HEAD_DIM), ("post_attention_norm", N_EMBD),
                        ("post_ffw_norm", N_EMBD)):
            writer.add_tensor(f"blk.{i}.{name}.weight", norm(n))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return destination
