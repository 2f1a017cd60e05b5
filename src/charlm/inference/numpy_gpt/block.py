"""A decoder block. Pre-LayerNorm: x + attention(norm(x)), then x + feed-forward(norm(x)).
Post-LayerNorm: norm(x + attention(x)), then norm(x + feed-forward(x))."""

import numpy as np

from charlm.inference.numpy_gpt.attention import KeyValueCache, MultiHeadAttention
from charlm.inference.numpy_gpt.feedforward import FeedForward
from charlm.inference.numpy_gpt.layernorm import norm_layer


class DecoderBlock:
    def __init__(self, weights: dict, prefix: str, n_head: int, activation: str, dropout_p: float = 0.0,
                 norm: str = "pre", norm_type: str = "layernorm", qk_norm: bool = False):
        self.post_norm = norm == "post"
        self.ln_1 = norm_layer(weights, f"{prefix}.ln_1", norm_type)
        self.attn = MultiHeadAttention(weights, f"{prefix}.attn", n_head, dropout_p, qk_norm)
        self.ln_2 = norm_layer(weights, f"{prefix}.ln_2", norm_type)
        self.mlp = FeedForward(weights, f"{prefix}.mlp", activation, dropout_p)

    def __call__(self, x: np.ndarray, cache: KeyValueCache | None = None, layer: int = 0,
                 rng: np.random.Generator | None = None,
                 rotary: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        if self.post_norm:
            x = self.ln_1(x + self.attn(x, cache, layer, rng, rotary))
            return self.ln_2(x + self.mlp(x, rng))
        x = x + self.attn(self.ln_1(x), cache, layer, rng, rotary)
        return x + self.mlp(self.ln_2(x), rng)
