"""One sampling function for every model: temperature, top-k and top-p (nucleus) sampling."""

from collections.abc import Iterator

import torch
from torch import nn


def pick_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Choose the next token for each row of logits (B, V); temperature 0 means greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the top one always stays.
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: nn.Module,
    prompt: torch.Tensor,
    num_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B,) one step at a time, continuing the prompt ids (B, T0).

    Without a cache the whole context (its last `model.block_size` tokens) is recomputed for every
    new token. Models with `forward_cached` keep their state between steps instead. When that state
    fills the window, it restarts from the last half of the context: the same cost per token on
    average, and exactly the recomputed result until the window first fills.
    """
    window = model.block_size
    cached = use_cache and hasattr(model, "forward_cached")
    was_training = model.training
    model.eval()
    try:
        ids, cache = prompt, None
        for _ in range(num_tokens):
            if not cached:
                logits = model(ids[:, -window:])  # (B, T, V)
            elif cache is None or cache.length >= window:
                keep = window if cache is None else max(1, window // 2)
                logits, cache = model.forward_cached(ids[:, -keep:], None)
            else:
                logits, cache = model.forward_cached(ids[:, -1:], cache)  # (B, 1, V)
            next_ids = pick_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B,)
            ids = torch.cat([ids, next_ids[:, None]], dim=1)
            yield next_ids
    finally:
        model.train(was_training)


def sample_text(model: nn.Module, vocab, prompt: str, num_tokens: int, **options) -> str:
    """Convenience for a single sample: prompt text in, generated text (without the prompt) out."""
    device = next(model.parameters()).device
    prompt_ids = torch.tensor([vocab.encode(prompt)], device=device)
    return vocab.decode([int(t) for t in generate(model, prompt_ids, num_tokens, **options)])
