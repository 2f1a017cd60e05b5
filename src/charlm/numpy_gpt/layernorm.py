"""Layer normalisation over the channel (last) axis."""

import numpy as np


class LayerNorm:
    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, eps: float = 1e-5):
        self.weight, self.bias, self.eps = weight, bias, eps

    def __call__(self, x: np.ndarray) -> np.ndarray:
        mean = x.mean(axis=-1, keepdims=True)
        var = x.var(axis=-1, keepdims=True)
        y = (x - mean) / np.sqrt(var + self.eps) * self.weight
        return y + self.bias if self.bias is not None else y
