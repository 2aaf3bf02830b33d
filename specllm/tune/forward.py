"""The draft's forward pass in PyTorch, written from its GGUF (llama, qwen2 and gemma3
architectures), with a LoRA on every attention and FFN projection.

It computes what llama.cpp computes for these architectures: RMS norm, rotary positions in the
architecture's style (see weights.ROPE_STYLE), grouped-query causal attention, a gated FFN,
and the output matrix (the token embedding when tied). Gemma3 (llama.cpp's build_gemma3) adds,
each where its tensors or settings say so: the embedding scaled by sqrt(n_embd), an RMS norm
of every query and key head, norms after attention and after the FFN (before the residual
adds), a tanh-GELU gate, its own query scale, and sliding-window layers with their own rotary
base. correctness.py checks the logits against llama.cpp's on the same tokens.

LoRA (Hu et al. 2021, the peft convention llama.cpp's adapters use): W x + (alpha / r) B A x,
with A (r, in) drawn small and B (out, r) zero, so training starts from the draft itself.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .weights import PROJECTIONS, ArchSettings, GgufWeights


class LoraLinear(nn.Module):
    """A frozen (dequantized) matrix plus a trainable low-rank update (rank 0: none)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], rank: int, alpha: float):
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.rank = rank
        self.scale = alpha / rank if rank else 0.0
        if rank:
            n_out, n_in = weight.shape
            self.lora_a = nn.Parameter(torch.empty(rank, n_in, dtype=weight.dtype))
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # peft's initialisation
            self.lora_b = nn.Parameter(torch.zeros(n_out, rank, dtype=weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.rank:
            y = y + self.scale * F.linear(F.linear(x, self.lora_a), self.lora_b)
        return y

    def delta(self) -> torch.Tensor:
        """The update the adapter adds to the weight: scale * B @ A, (out, in)."""
        return self.scale * (self.lora_b @ self.lora_a)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_rot: int, style: str) -> torch.Tensor:
    """Rotary positions on the first n_rot dims of each head; x is (heads, T, head_dim)."""
    rot, rest = x[..., :n_rot], x[..., n_rot:]
    if style == "norm":  # adjacent pairs (x0, x1), (x2, x3), ...
        x0, x1 = rot[..., 0::2], rot[..., 1::2]
        turned = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
    else:  # neox: (x_i, x_{i + n_rot/2})
        half = n_rot // 2
        x0, x1 = rot[..., :half], rot[..., half:]
        turned = torch.cat((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return torch.cat((turned, rest), dim=-1)


class Block(nn.Module):
    def __init__(self, w: GgufWeights, i: int, rank: int, alpha: float, device: torch.device):
        super().__init__()

        def tensor(name: str) -> Optional[torch.Tensor]:
            full = f"blk.{i}.{name}"
            return torch.from_numpy(w.array(full)).to(device) if w.has(full) else None

        self.index = i
        self.attn_norm = tensor("attn_norm.weight")
        self.ffn_norm = tensor("ffn_norm.weight")
        # Gemma3's (None elsewhere): per-head query/key norms, norms of each sublayer's output.
        self.q_norm, self.k_norm = tensor("attn_q_norm.weight"), tensor("attn_k_norm.weight")
        self.post_attn_norm, self.post_ffn_norm = tensor("post_attention_norm.weight"), tensor("post_ffw_norm.weight")
        self.proj = nn.ModuleDict({
            name: LoraLinear(tensor(f"{name}.weight"), tensor(f"{name}.bias"), rank, alpha) for name in PROJECTIONS
        })

    def forward(self, x: torch.Tensor, s: ArchSettings, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        p, T = self.proj, x.shape[0]
        h = rms_norm(x, self.attn_norm, s.rms_eps)
        q = p["attn_q"](h).view(T, s.n_head, s.head_dim).transpose(0, 1)
        k = p["attn_k"](h).view(T, s.n_head_kv, s.head_dim).transpose(0, 1)
        v = p["attn_v"](h).view(T, s.n_head_kv, s.head_dim).transpose(0, 1)
        if self.q_norm is not None:
            q, k = rms_norm(q, self.q_norm, s.rms_eps), rms_norm(k, self.k_norm, s.rms_eps)
        q, k = rotate(q, cos, sin, s.n_rot, s.rope_style), rotate(k, cos, sin, s.n_rot, s.rope_style)
        if s.n_head_kv != s.n_head:  # grouped-query attention: each kv head serves a group of q heads
            group = s.n_head // s.n_head_kv
            k, v = k.repeat_interleave(group, dim=0), v.repeat_interleave(group, dim=0)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(T, s, self.index, x.device),
                                              scale=s.attn_scale)
        out = p["attn_output"](attn.transpose(0, 1).reshape(T, s.n_head * s.head_dim))
        x = x + (out if self.post_attn_norm is None else rms_norm(out, self.post_attn_norm, s.rms_eps))
        h = rms_norm(x, self.ffn_norm, s.rms_eps)
        gate = p["ffn_gate"](h)
        gate = F.silu(gate) if s.ffn_act == "silu" else F.gelu(gate, approximate="tanh")  # ggml_gelu is tanh's
        out = p["ffn_down"](gate * p["ffn_up"](h))
        return x + (out if self.post_ffn_norm is None else rms_norm(out, self.post_ffn_norm, s.rms_eps))


def attention_mask(T: int, s: ArchSettings, layer: int, device: torch.device) -> torch.Tensor:
    """Which keys each query sees (True: attends): causal, and on a sliding-window layer only the
    last s.sliding_window positions, the query's own included (llama.cpp's LLAMA_SWA_TYPE_STANDARD
    masks a key when query position - key position >= the window)."""
    pos = torch.arange(T, device=device)
    distance = pos[:, None] - pos[None, :]
    allowed = distance >= 0
    if s.is_local(layer):
        allowed &= distance < s.sliding_window
    return allowed


class DraftModel(nn.Module):
    """The draft as llama.cpp runs it, in float32, with LoRA of `rank` (0: the draft alone)."""

    def __init__(self, weights: GgufWeights, *, rank: int = 0, alpha: float = 1.0, device: str = "cpu"):
        super().__init__()
        self.settings = s = weights.settings
        self.rank, self.alpha = rank, alpha
        dev = torch.device(device)
        self.token_embd = torch.from_numpy(weights.array("token_embd.weight")).to(dev)
        # Small drafts tie the output matrix to the embedding (no output.weight in the file).
        self.output = (torch.from_numpy(weights.array("output.weight")).to(dev)
                       if weights.has("output.weight") else self.token_embd)
        self.output_norm = torch.from_numpy(weights.array("output_norm.weight")).to(dev)
        self.blocks = nn.ModuleList(Block(weights, i, rank, alpha, dev) for i in range(s.n_layer))

    @property
    def device(self) -> torch.device:
        return self.token_embd.device

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """The final normalised hidden states (T, n_embd) of a token sequence from position 0."""
        s = self.settings
        positions = torch.arange(tokens.shape[0], dtype=torch.float64, device=self.device)
        rotations = {}  # (base, position scale) -> (cos, sin): Gemma3's local and global layers differ
        x = self.token_embd[tokens]
        if s.embd_scale != 1.0:
            x = x * s.embd_scale
        for i, block in enumerate(self.blocks):
            rope = s.rope(i)
            if rope not in rotations:
                base, scale = rope
                inv_freq = base ** (-torch.arange(0, s.n_rot, 2, dtype=torch.float64, device=self.device) / s.n_rot)
                angles = torch.outer(positions * scale, inv_freq)
                rotations[rope] = angles.cos().float(), angles.sin().float()
            x = block(x, s, *rotations[rope])
        return rms_norm(x, self.output_norm, s.rms_eps)

    def logits(self, tokens: torch.Tensor, rows: Optional[slice] = None) -> torch.Tensor:
        """Logits (T or len(rows), n_vocab): row i predicts the token after tokens[i]. `rows`
        keeps only the positions a loss needs (the output matrix is the dearest product)."""
        h = self.hidden(tokens)
        return F.linear(h if rows is None else h[rows], self.output)

    def lora_layers(self) -> dict[str, LoraLinear]:
        """'blk.N.<proj>.weight' -> its LoRA layer: the names of the adapter's tensors."""
        return {f"blk.{i}.{name}.weight": layer for i, block in enumerate(self.blocks)
                for name, layer in block.proj.items() if layer.rank}

    def lora_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().cpu().clone() for name, p in self.named_parameters()}

    def load_lora_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value.to(params[name].device))
