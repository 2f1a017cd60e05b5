"""Layer and RMS normalisation over the channel (last) axis."""

import numpy as np


def mean_of_channels(x: np.ndarray) -> np.ndarray:
    """x.mean(axis=-1, keepdims=True) without ndarray.mean's Python-level wrapper, which costs more
    than the arithmetic on one character's vector during generation."""
    return np.add.reduce(x, axis=-1, keepdims=True) * np.float32(1 / x.shape[-1])


class LayerNorm:
    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, eps: float = 1e-5):
        self.weight, self.bias, self.eps = weight, bias, eps

    def __call__(self, x: np.ndarray) -> np.ndarray:
        centered = x - mean_of_channels(x)
        y = centered * (self.weight / np.sqrt(mean_of_channels(centered * centered) + self.eps))
        return y + self.bias if self.bias is not None else y


class RMSNorm:
    """x / rms(x) * weight: no mean subtracted, no bias."""

    def __init__(self, weight: np.ndarray, eps: float = 1e-5):
        self.weight, self.eps = weight, eps

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x * (self.weight / np.sqrt(mean_of_channels(x * x) + self.eps))


def rms(x: np.ndarray, eps: float) -> np.ndarray:
    """Parameter-free RMS normalisation over the last axis."""
    return x / np.sqrt(mean_of_channels(x * x) + eps)


def norm_layer(weights: dict, name: str, norm_type: str):
    if norm_type == "rmsnorm":
        return RMSNorm(weights[f"{name}.weight"])
    return LayerNorm(weights[f"{name}.weight"], weights.get(f"{name}.bias"))
