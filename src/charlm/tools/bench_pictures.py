"""What the training run's pictures (callbacks.inside_pictures) cost: one picture per validation, as
TensorBoard receives it (drawn and PNG-encoded), against the run's own training steps."""

import statistics
import time

import numpy as np
import torch
from torch.utils.tensorboard.summary import image

from charlm.inference.pictures import attention_grid, attention_maps, influence, influence_strip


def picture_seconds(model, ids: list[int], repeats: int) -> float:
    """Median seconds to draw and encode one picture of `ids`, as the callback does."""
    model.eval()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        if hasattr(model, "attention_maps"):
            pixels = attention_grid(attention_maps(model, ids))
        else:
            pixels = influence_strip(influence(model, ids))
        image("inside", pixels, dataformats="HWC")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pictures_case(cfg, case: str, model, step_seconds: float, repeats: int) -> dict:
    """One preset: a picture's cost, and its share of the run, whose training steps alone (no validation,
    no Lightning) take max_steps x the median bare step: an upper bound on the share."""
    characters = min(cfg.callbacks.inside_pictures.characters, cfg.block_size)
    ids = np.random.default_rng(0).integers(0, model.tok_emb.num_embeddings, characters).tolist()
    with torch.no_grad():
        seconds = picture_seconds(model, ids, repeats)
    validations = cfg.max_steps // min(cfg.eval_interval, cfg.max_steps) + 1  # and the final one
    training = cfg.max_steps * step_seconds
    return {"case": case, "picture_ms": seconds * 1e3, "validations": validations,
            "pictures_s": seconds * validations, "training_steps_s": training,
            "share_pct": 100 * seconds * validations / training}
