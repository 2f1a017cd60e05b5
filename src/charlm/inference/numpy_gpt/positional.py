"""Position information: a learned table or fixed sinusoids added to token embeddings, or rotary
embeddings applied to attention queries and keys."""

import numpy as np


def sinusoidal_encoding(length: int, dim: int) -> np.ndarray:
    """sin(pos / 10000^(2i/dim)) on even channels, cos on odd channels, as (length, dim) float32."""
    position = np.arange(length, dtype=np.float64)[:, None]
    frequency = np.exp(np.arange(0, dim, 2, dtype=np.float64) * (-np.log(10000.0) / dim))
    table = np.zeros((length, dim))
    table[:, 0::2] = np.sin(position * frequency)
    table[:, 1::2] = np.cos(position * frequency[: dim // 2])
    return table.astype(np.float32)


class PositionalEncoding:
    def __init__(self, table: np.ndarray):
        self.table = table  # (block_size, C): learned weights, or sinusoidal_encoding(...)

    def __call__(self, start: int, length: int) -> np.ndarray:
        return self.table[start : start + length]  # (T, C)


def rotary_tables(length: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of position * 10000^(-2i/head_dim), (length, head_dim/2) float32 each."""
    frequency = 10000.0 ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angle = np.arange(length, dtype=np.float64)[:, None] * frequency
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate channel pairs (i, i + D/2) of x (B, H, T, D) by their position's angles (T, D/2)."""
    half = x.shape[-1] // 2
    first, second = x[..., :half], x[..., half:]
    return np.concatenate((first * cos - second * sin, second * cos + first * sin), axis=-1)
