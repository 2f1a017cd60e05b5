"""One sampling loop for every model and backend, in NumPy (the NumPy engine must not need torch).

A model plugs in through a runner with `block_size`, `logits(ids)` (recompute: last-position logits
of the ids, (B, V)), `has_cache` and, if that is true, `forward_cached(ids, cache)` returning the
last-position logits and the updated cache (whose `length` counts the characters it holds). Torch models get one
from `charlm.inference.torch_runner.TorchRunner`; the NumPy GPT is its own runner.
"""

from collections.abc import Iterator

import numpy as np


def pick_next(
    logits: np.ndarray,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Choose the next token for each row of logits (B, V); temperature 0 means greedy."""
    if temperature == 0:
        return logits.argmax(axis=-1)
    scaled = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        kth_largest = np.sort(scaled, axis=-1)[:, -top_k][:, None]
        scaled = np.where(scaled < kth_largest, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the top one always stays.
        drop_sorted = np.cumsum(sorted_probs, axis=-1) - sorted_probs >= top_p
        drop = np.empty_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(axis=-1, keepdims=True)
    rng = rng if rng is not None else np.random.default_rng()
    draws = rng.random((probs.shape[0], 1))
    return np.minimum((np.cumsum(probs, axis=-1) < draws).sum(axis=-1), probs.shape[-1] - 1)


def generate(
    runner,
    prompt: np.ndarray,
    num_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: np.random.Generator | None = None,
    use_cache: bool = True,
) -> Iterator[np.ndarray]:
    """Yield the next token ids (B,) one step at a time, continuing the prompt ids (B, T0).

    Without a cache the whole context (its last `block_size` tokens) is recomputed for every new
    token. With one, each step feeds only the newest token. When the cache fills the window it
    restarts from the last half of the context: the same cost per token on average, and exactly the
    recomputed result until the window first fills.
    """
    window = runner.block_size
    cached = use_cache and runner.has_cache
    ids, cache = np.asarray(prompt, dtype=np.int64), None
    for _ in range(num_tokens):
        if not cached:
            logits = runner.logits(ids[:, -window:])
        elif cache is None or cache.length >= window:
            keep = window if cache is None else max(1, window // 2)
            logits, cache = runner.forward_cached(ids[:, -keep:], None)
        else:
            logits, cache = runner.forward_cached(ids[:, -1:], cache)
        next_ids = pick_next(logits, temperature, top_k, top_p, rng)  # (B,)
        ids = np.concatenate([ids, next_ids[:, None]], axis=1)
        yield next_ids


def sample_text(runner, vocab, prompt: str, num_tokens: int, **options) -> str:
    """One sample: prompt text in, generated text (without the prompt) out."""
    prompt_ids = np.array([vocab.encode(prompt)], dtype=np.int64)
    return vocab.decode([int(t[0]) for t in generate(runner, prompt_ids, num_tokens, **options)])


# Control characters but newline and tab -> their Unicode pictures: U+0000 -> U+2400 (␀), DEL -> U+2421 (␡).
CONTROL_PICTURES = {code: 0x2400 + code for code in range(32) if chr(code) not in "\n\t"} | {0x7F: 0x2421}


def visible(text: str) -> str:
    """Text for a terminal, a log or TensorBoard: a model of bytes may write any control character, and
    printed as is one can move the cursor or recolour the terminal; each is shown as its picture, but a
    Windows line end (carriage return, newline), which a model of such a text writes at every line."""
    return "\r\n".join(part.translate(CONTROL_PICTURES) for part in text.split("\r\n"))
