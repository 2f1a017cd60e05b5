"""Causal multi-head self-attention, with an optional key/value cache for generation."""

import math

import numpy as np

from charlm.inference.numpy_gpt.feedforward import dropout, linear
from charlm.inference.numpy_gpt.layernorm import rms
from charlm.inference.numpy_gpt.positional import rotate

RMS_EPS = 1e-6  # as the torch GPT's qk_norm


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class KeyValueCache:
    """Keys and values of every layer, allocated once for the whole window: (L, B, H, block, D)."""

    def __init__(self, n_layer: int, batch: int, n_head: int, block_size: int, head_dim: int):
        self.keys = np.zeros((n_layer, batch, n_head, block_size, head_dim), dtype=np.float32)
        self.values = np.zeros_like(self.keys)
        self.length = 0  # characters stored so far


class MultiHeadAttention:
    def __init__(self, weights: dict, prefix: str, n_head: int, dropout_p: float = 0.0, qk_norm: bool = False):
        self.qkv_w, self.qkv_b = weights[f"{prefix}.qkv.weight"], weights.get(f"{prefix}.qkv.bias")
        self.proj_w, self.proj_b = weights[f"{prefix}.proj.weight"], weights.get(f"{prefix}.proj.bias")
        self.n_head = n_head
        self.dropout_p = dropout_p
        self.qk_norm = qk_norm
        self.weights: np.ndarray | None = None  # the last pass's attention weights, before dropout

    def __call__(self, x: np.ndarray, cache: KeyValueCache | None = None, layer: int = 0,
                 rng: np.random.Generator | None = None,
                 rotary: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """x (B, T, C) -> (B, T, C); `rotary`: (cos, sin) of these positions for rotary embeddings."""
        B, T, C = x.shape
        D = C // self.n_head
        qkv = linear(x, self.qkv_w, self.qkv_b).reshape(B, T, 3 * self.n_head, D).transpose(0, 2, 1, 3)  # (B, 3H, T, D)
        # Queries and keys go through the same steps at once: fewer NumPy calls per generated character.
        qk, v = qkv[:, : 2 * self.n_head], qkv[:, 2 * self.n_head :]
        if self.qk_norm:
            qk = rms(qk, RMS_EPS)
        if rotary is not None:
            qk = rotate(qk, *rotary)
        q, k = qk[:, : self.n_head], qk[:, self.n_head :]  # (B, H, T, D) each
        start = 0
        if cache is not None:  # store this step, then attend to everything stored
            start = cache.length
            cache.keys[layer, :, :, start : start + T] = k
            cache.values[layer, :, :, start : start + T] = v
            k, v = cache.keys[layer, :, :, : start + T], cache.values[layer, :, :, : start + T]
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(D)  # (B, H, T, start+T); a Python float keeps float32
        if T > 1:  # query i sits at position start+i and may see keys 0 .. start+i (one query sees them all)
            scores = np.where(np.arange(start + T)[None, :] <= (start + np.arange(T))[:, None], scores, -np.inf)
        self.weights = softmax(scores)  # (B, H, T, start+T): kept for pictures
        weights = dropout(self.weights, self.dropout_p, rng)
        y = (weights @ v).transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, H, T, D) -> (B, T, C)
        return dropout(linear(y, self.proj_w, self.proj_b), self.dropout_p, rng)
