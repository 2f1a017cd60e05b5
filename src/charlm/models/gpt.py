"""A decoder-only transformer (GPT) for characters, in plain PyTorch.

Shapes: B batch, T time (characters), C channels (n_embd), H heads, D head size, V vocabulary.
For generation, `forward_cached` keeps each layer's keys and values, so a new character attends to
the stored past instead of recomputing it.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from charlm.core.model_config import GPTConfig


class ReLUSquared(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "relu2": ReLUSquared}
RMS_EPS = 1e-6  # for qk_norm; the NumPy engine uses the same


def norm_layer(config: GPTConfig) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=1e-5)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


def sinusoidal_encoding(length: int, dim: int) -> torch.Tensor:
    """The fixed encoding of "Attention Is All You Need": sin on even channels, cos on odd, (length, dim)."""
    position = torch.arange(length, dtype=torch.float64)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table.float()


def rotary_tables(length: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * 10000^(-2i/head_dim) for rotary embeddings (RoFormer), (length, head_dim/2) each."""
    frequency = 10000.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angle = torch.arange(length, dtype=torch.float64)[:, None] * frequency
    return angle.cos().float(), angle.sin().float()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + D/2) of queries and keys x (B, T, 2, H, D) by their position's
    angles (T, 1, 1, D/2), so query-key dot products depend only on the distance between positions."""
    first, second = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # keep autocast's half precision
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


@dataclass
class GPTCache:
    """Generation state: how many characters are stored, and every layer's keys and values in
    buffers of the whole window, allocated once. Fixed shapes let a compiled step run at every
    position, and writing in place beats growing tensors step by step."""

    length: int
    keys: list[torch.Tensor]  # per layer (B, H, block_size, D); zeros where nothing is stored yet
    values: list[torch.Tensor]  # per layer (B, H, block_size, D)


class LayerCache(NamedTuple):
    """What one attention layer needs to continue a cache."""

    keys: torch.Tensor  # (B, H, block_size, D), written in place at `positions`
    values: torch.Tensor  # (B, H, block_size, D)
    positions: torch.Tensor  # (T,) the positions of this step's characters
    visible: torch.Tensor  # (T, block_size) bool: which stored slots each new character may attend to


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qk_norm = config.qk_norm
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias and config.qkv_bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.proj_dropout = nn.Dropout(config.dropout)
        self.keep_weights = False  # GPT.attention_maps: compute the weights explicitly and keep them
        self.weights: torch.Tensor | None = None  # (B, H, T, T) from the last pass that kept them

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: LayerCache | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). `rotary`: the (cos, sin) angles of these T positions, for rotary
        position embeddings. With a cache, this step's keys and values are stored at their positions
        and the queries attend to every visible slot."""
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head)  # (B, T, 3, H, D)
        qk = qkv[:, :, :2]  # queries and keys at once
        if self.qk_norm:
            qk = F.rms_norm(qk, (C // self.n_head,), eps=RMS_EPS)
        qk = qk if rotary is None else rotate(qk, *rotary)
        q, k, v = (t.transpose(1, 2) for t in (*qk.unbind(2), qkv[:, :, 2]))  # (B, H, T, D) each
        if cache is None and self.keep_weights:  # the same attention, its weights kept for pictures
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, T)
            future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            self.weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
            y = self.weights @ v
        elif cache is None:
            dropout = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            cache.keys[:, :, cache.positions] = k  # in place, so a compiled step updates the cache too
            cache.values[:, :, cache.positions] = v
            y = F.scaled_dot_product_attention(q, cache.keys, cache.values, attn_mask=cache.visible)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, H, T, D) -> (B, T, C)
        return self.proj_dropout(self.proj(y))


class MLP(nn.Module):
    """Expand, activation, project back. SwiGLU: fc makes a gate and a value half, silu(gate) * value."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        width, self.gated = config.mlp_width, config.activation == "swiglu"
        self.fc = nn.Linear(config.n_embd, 2 * width if self.gated else width, bias=config.bias)
        self.act = nn.SiLU() if self.gated else ACTIVATIONS[config.activation]()
        self.proj = nn.Linear(width, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc(x)  # (B, T, W), or (B, T, 2W) for SwiGLU
        if self.gated:
            gate, value = hidden.chunk(2, dim=-1)
            hidden = self.act(gate) * value  # (B, T, W)
        else:
            hidden = self.act(hidden)
        return self.dropout(self.proj(hidden))  # (B, T, C)


class Block(nn.Module):
    """Transformer block. Pre-LayerNorm: x + attn(ln(x)), then x + mlp(ln(x)).
    Post-LayerNorm: ln(x + attn(x)), then ln(x + mlp(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.post_norm = config.norm == "post"
        self.ln_1 = norm_layer(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = norm_layer(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: LayerCache | None = None) -> torch.Tensor:
        if self.post_norm:
            x = self.ln_1(x + self.attn(x, rotary, cache))
            return self.ln_2(x + self.mlp(x))
        x = x + self.attn(self.ln_1(x), rotary, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, **options):
        super().__init__()
        self.config = config = GPTConfig(**options)
        self.block_size = config.block_size
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        # Fixed encodings are buffers, not parameters, and are not saved: they are rebuilt from the config.
        if config.pos_encoding == "learned":
            self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        elif config.pos_encoding == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_encoding(config.block_size, config.n_embd), persistent=False)
        else:  # rope: positions enter through the attention's queries and keys, not the embeddings
            cos, sin = rotary_tables(config.block_size, config.n_embd // config.n_head)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = norm_layer(config)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias and not config.tie_weights)
        if config.tie_weights:
            self.head.weight = self.tok_emb.weight
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, nn.Linear) and module.weight is not self.tok_emb.weight:
                if config.init == "xavier":
                    nn.init.xavier_uniform_(module.weight)
                else:
                    nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if config.init == "gpt2":  # scale projections into the residual stream by 1/sqrt(2 * n_layer)
            for name, param in self.named_parameters():
                if name.endswith("proj.weight"):
                    nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.zero_init_proj:  # each block starts as the identity; its output grows from zero
            for name, param in self.named_parameters():
                if name.endswith("proj.weight"):
                    nn.init.zeros_(param)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) to next-token logits (B, T, V), each position seeing only its past."""
        T = idx.shape[1]
        if T > self.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size {self.block_size}")
        return self.run(idx, slice(0, T))  # a slice of the position tables: cheaper than a lookup, same gradient

    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:
        """What every head attends to, from this model's own forward pass over ids (B, T) (eval mode: no
        dropout): (L, B, H, T, T), row i the weights query i gives keys 0..i, each row summing to 1."""
        layers = [block.attn for block in self.blocks]
        for attention in layers:
            attention.keep_weights = True
        try:
            self(idx)
            return torch.stack([attention.weights for attention in layers])
        finally:
            for attention in layers:
                attention.keep_weights, attention.weights = False, None

    def forward_cached(self, idx: torch.Tensor, cache: GPTCache | None, step=None) -> tuple[torch.Tensor, GPTCache]:
        """Continue from `cache` (None: start of text) with ids (B, T); returns logits (B, T, V).
        `step` replaces `self.step` (a compiled copy, say)."""
        cache = self.new_cache(idx.shape[0]) if cache is None else cache
        start, T = cache.length, idx.shape[1]
        if start + T > self.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size {self.block_size}")
        positions = torch.arange(start, start + T, device=idx.device)
        logits = (step or self.step)(idx, positions, cache.keys, cache.values)
        cache.length += T
        return logits, cache

    def new_cache(self, batch: int) -> GPTCache:
        c = self.config
        shape = (batch, c.n_head, c.block_size, c.n_embd // c.n_head)
        # zeros, not empty: hidden slots get zero attention weight, and 0 * NaN would still be NaN
        return GPTCache(0, *([self.tok_emb.weight.new_zeros(shape) for _ in range(c.n_layer)] for _ in "kv"))

    def step(self, idx: torch.Tensor, positions: torch.Tensor, keys: list[torch.Tensor],
             values: list[torch.Tensor]) -> torch.Tensor:
        """One cached step in fixed shapes: ids (B, T) at `positions` (T,) -> logits (B, T, V), storing
        their keys and values in the per-layer buffers (B, H, block_size, D)."""
        visible = torch.arange(self.block_size, device=idx.device) <= positions[:, None]  # (T, block_size)
        caches = [LayerCache(k, v, positions, visible) for k, v in zip(keys, values, strict=True)]
        return self.run(idx, positions, caches)

    def run(self, idx: torch.Tensor, positions: slice | torch.Tensor,
            caches: list[LayerCache] | None = None) -> torch.Tensor:
        """The network: ids (B, T) at `positions` (a slice, or a (T,) tensor) -> logits (B, T, V)."""
        x, rotary = self.tok_emb(idx), None  # (B, T, C)
        if self.config.pos_encoding == "rope":
            # (T, 1, 1, D/2) each, to broadcast over (B, T, 2, H, D/2) queries and keys
            rotary = self.rope_cos[positions][:, None, None], self.rope_sin[positions][:, None, None]
        else:
            table = self.pos_emb.weight if self.config.pos_encoding == "learned" else self.pos_table
            x = x + table[positions]  # (T, C) broadcast over the batch
        x = self.dropout(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rotary, None if caches is None else caches[i])
        logits = self.head(self.ln_f(x))  # (B, T, V)
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits
