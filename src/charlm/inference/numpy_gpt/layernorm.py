"""Layer and RMS normalisation over the channel (last) axis."""

import numpy as np


class LayerNorm:
    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, eps: float = 1e-5):
        self.weight, self.bias, self.eps = weight, bias, eps

    def __call__(self, x: np.ndarray) -> np.ndarray:
        centered = x - x.mean(axis=-1, keepdims=True)
        y = centered / np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + self.eps) * self.weight
        return y + self.bias if self.bias is not None else y


class RMSNorm:
    """x / rms(x) * weight: no mean subtracted, no bias."""

    def __init__(self, weight: np.ndarray, eps: float = 1e-5):
        self.weight, self.eps = weight, eps

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + self.eps) * self.weight


def rms(x: np.ndarray, eps: float) -> np.ndarray:
    """Parameter-free RMS normalisation over the last axis."""
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)


def norm_layer(weights: dict, name: str, norm_type: str):
    if norm_type == "rmsnorm":
        return RMSNorm(weights[f"{name}.weight"])
    return LayerNorm(weights[f"{name}.weight"], weights.get(f"{name}.bias"))
