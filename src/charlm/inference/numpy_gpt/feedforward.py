"""The position-wise MLP: expand, activation (or SwiGLU's gate), project back."""

import math

import numpy as np


def erf(x: np.ndarray) -> np.ndarray:
    """Error function (Abramowitz & Stegun 7.1.26, max error 1.5e-7): NumPy has none of its own."""
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-x * x))


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, x * Phi(x), as torch.nn.GELU computes it."""
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))  # math, not np.sqrt: a NumPy float64 would upcast x


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def relu_squared(x: np.ndarray) -> np.ndarray:
    return np.square(np.maximum(x, 0.0))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def swiglu(x: np.ndarray) -> np.ndarray:
    """fc's output holds a gate half and a value half: silu(gate) * value."""
    gate, value = np.split(x, 2, axis=-1)
    return silu(gate) * value


ACTIVATIONS = {"gelu": gelu, "relu": relu, "relu2": relu_squared, "swiglu": swiglu}


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """x (..., in) @ weight.T (weight is (out, in), as torch stores it) + bias."""
    y = x @ weight.T
    return y + bias if bias is not None else y


def dropout(x: np.ndarray, p: float, rng: np.random.Generator | None) -> np.ndarray:
    """Inverted dropout for training-mode forward passes; identity when rng is None (inference)."""
    if rng is None or p == 0.0:
        return x
    keep = rng.random(x.shape) >= p
    return np.where(keep, x / (1.0 - p), 0.0).astype(x.dtype)


class FeedForward:
    def __init__(self, weights: dict, prefix: str, activation: str, dropout_p: float = 0.0):
        self.fc_w, self.fc_b = weights[f"{prefix}.fc.weight"], weights.get(f"{prefix}.fc.bias")
        self.proj_w, self.proj_b = weights[f"{prefix}.proj.weight"], weights.get(f"{prefix}.proj.bias")
        self.act = ACTIVATIONS[activation]
        self.dropout_p = dropout_p

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        hidden = self.act(linear(x, self.fc_w, self.fc_b))  # (B, T, W)
        return dropout(linear(hidden, self.proj_w, self.proj_b), self.dropout_p, rng)  # (B, T, C)
