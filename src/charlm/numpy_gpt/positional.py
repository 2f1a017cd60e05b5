"""Position information added to token embeddings: a learned table, or fixed sinusoids."""

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
