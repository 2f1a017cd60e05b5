"""The whole GPT in NumPy: embeddings + positions, decoder blocks, final norm, vocabulary projection.

It runs the weights of a trained torch GPT (exported with `charlm export`) and gives the
same logits to within float32 rounding. It also serves as a runner for `charlm.core.generation.generate`.
"""

import math
from dataclasses import asdict

import numpy as np

from charlm.core.model_config import GPTConfig, model_settings
from charlm.inference.numpy_gpt.attention import KeyValueCache
from charlm.inference.numpy_gpt.block import DecoderBlock
from charlm.inference.numpy_gpt.feedforward import dropout, linear
from charlm.inference.numpy_gpt.layernorm import norm_layer
from charlm.inference.numpy_gpt.positional import PositionalEncoding, rotary_tables, sinusoidal_encoding


class NumpyGPT:
    has_cache = True

    def __init__(self, config: dict, weights: dict[str, np.ndarray]):
        """`config`: the torch GPT's config dict (as saved in checkpoints); defaults come from GPTConfig."""
        self.tok_emb = weights["tok_emb.weight"]  # (V, C)
        settings = model_settings({"name": "gpt", **config}, vocab_size=self.tok_emb.shape[0])
        self.config = asdict(settings)
        self.block_size = settings.block_size
        self.n_layer, self.n_head, self.n_embd = settings.n_layer, settings.n_head, settings.n_embd
        self.dropout_p = settings.dropout
        encoding = settings.pos_encoding
        self.positions, self.rotary = None, None
        if encoding == "learned":
            self.positions = PositionalEncoding(weights["pos_emb.weight"])
        elif encoding == "sinusoidal":
            self.positions = PositionalEncoding(sinusoidal_encoding(self.block_size, self.n_embd))
        else:  # rope
            self.rotary = rotary_tables(self.block_size, self.n_embd // self.n_head)
        self.blocks = [DecoderBlock(weights, f"blocks.{i}", self.n_head, settings.activation, self.dropout_p,
                                    settings.norm, settings.norm_type, settings.qk_norm) for i in range(self.n_layer)]
        self.ln_f = norm_layer(weights, "ln_f", settings.norm_type)
        self.logit_softcap = settings.logit_softcap
        self.head_w = self.tok_emb if settings.tie_weights else weights["head.weight"]  # (V, C)
        self.head_b = weights.get("head.bias")

    def forward(self, ids: np.ndarray, cache: KeyValueCache | None = None,
                rng: np.random.Generator | None = None) -> np.ndarray:
        """Token ids (B, T) to logits (B, T, V). Pass an rng for a training-mode pass with dropout."""
        start = 0 if cache is None else cache.length
        T = ids.shape[1]
        if start + T > self.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size {self.block_size}")
        x, rotary = self.tok_emb[ids], None  # (B, T, C)
        if self.rotary is not None:
            rotary = tuple(table[start : start + T] for table in self.rotary)  # (T, D/2) each
        else:
            x = x + self.positions(start, T)
        x = dropout(x, self.dropout_p, rng)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, rng, rotary)
        if cache is not None:
            cache.length += T
        logits = linear(self.ln_f(x), self.head_w, self.head_b)  # (B, T, V)
        cap = self.logit_softcap
        return (cap * np.tanh(logits / cap)).astype(logits.dtype) if cap else logits

    # The runner interface of charlm.core.generation.generate:
    def logits(self, ids: np.ndarray) -> np.ndarray:
        return self.forward(ids)[:, -1]

    def forward_cached(self, ids: np.ndarray, cache: KeyValueCache | None):
        if cache is None:
            cache = KeyValueCache(self.n_layer, ids.shape[0], self.n_head, self.block_size, self.n_embd // self.n_head)
        return self.forward(ids, cache)[:, -1], cache


def random_weights(config: dict, vocab_size: int, init: str = "gpt2", seed: int = 0) -> dict[str, np.ndarray]:
    """Fresh weights in the torch GPT's layout: "gpt2" (normal 0.02, residual projections scaled by
    1/sqrt(2 n_layer)) or "xavier" (Glorot uniform for linear layers); zero biases, unit norm gains."""
    rng = np.random.default_rng(seed)
    config = asdict(GPTConfig(**{k: v for k, v in config.items() if k != "name"}))  # defaults filled in
    C, L = config["n_embd"], config["n_layer"]
    bias = config["bias"]

    def matrix(out_dim: int, in_dim: int, residual: bool = False) -> np.ndarray:
        if init == "xavier":
            limit = math.sqrt(6.0 / (in_dim + out_dim))
            return rng.uniform(-limit, limit, (out_dim, in_dim)).astype(np.float32)
        std = 0.02 / math.sqrt(2 * L) if residual else 0.02
        return (rng.standard_normal((out_dim, in_dim)) * std).astype(np.float32)

    weights = {"tok_emb.weight": (rng.standard_normal((vocab_size, C)) * 0.02).astype(np.float32)}
    if config["pos_encoding"] == "learned":
        weights["pos_emb.weight"] = (rng.standard_normal((config["block_size"], C)) * 0.02).astype(np.float32)
    W = GPTConfig(**config).mlp_width
    fc_out = 2 * W if config["activation"] == "swiglu" else W
    shapes = {"attn.qkv": (3 * C, C, False), "attn.proj": (C, C, True), "mlp.fc": (fc_out, C, False),
              "mlp.proj": (C, W, True)}
    for i in range(L):
        for norm in ("ln_1", "ln_2"):
            weights[f"blocks.{i}.{norm}.weight"] = np.ones(C, np.float32)
            if bias:
                weights[f"blocks.{i}.{norm}.bias"] = np.zeros(C, np.float32)
        for name, (out_dim, in_dim, residual) in shapes.items():
            weights[f"blocks.{i}.{name}.weight"] = matrix(out_dim, in_dim, residual)
            if bias and (name != "attn.qkv" or config["qkv_bias"]):
                weights[f"blocks.{i}.{name}.bias"] = np.zeros(out_dim, np.float32)
    weights["ln_f.weight"] = np.ones(C, np.float32)
    if bias:
        weights["ln_f.bias"] = np.zeros(C, np.float32)
    if not config["tie_weights"]:
        weights["head.weight"] = matrix(vocab_size, C)
        if bias:
            weights["head.bias"] = np.zeros(vocab_size, np.float32)
    return weights
