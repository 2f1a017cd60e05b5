"""The training recipe that Lightning and the bare benchmark loop share: the loss, AdamW's parameter
groups and the learning-rate schedule."""

import math

import torch
import torch.nn.functional as F
from torch import nn


def next_token_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    inputs, targets = batch  # (B, T) each
    logits = model(inputs)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def warmup_cosine(step: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up to 1, cosine decay to `min_lr_ratio`, then flat."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, decay_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_stable_decay(step: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float,
                        decay_fraction: float) -> float:
    """Learning-rate multiplier: linear warm-up to 1, flat at 1, then a linear decay to `min_lr_ratio`
    over the last `decay_fraction` of the schedule, then flat."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_start = decay_steps - decay_fraction * (decay_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - decay_start) / max(1.0, decay_steps - decay_start)))
    return 1.0 - (1.0 - min_lr_ratio) * progress


def make_optimizer(model: nn.Module, optim: dict, max_steps: int, fused: bool = False):
    """AdamW with weight decay on matrices only (linear, conv and embedding weights), and the
    learning-rate schedule (warm-up + cosine, or warm-up-stable-decay) stepped per optimizer step."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": optim["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},  # biases, norm gains
    ]
    # fused on CUDA; elsewhere foreach: one kernel per group, not per tensor (docs/performance.md).
    optimizer = torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]), fused=fused,
                                  foreach=not fused)
    decay_steps = optim.get("decay_steps") or max_steps
    warmup, floor = optim["warmup_steps"], optim["min_lr_ratio"]
    if optim.get("schedule", "cosine") == "wsd":
        fraction = optim.get("decay_fraction", 0.2)
        multiplier = lambda step: warmup_stable_decay(step, warmup, decay_steps, floor, fraction)  # noqa: E731
    else:
        multiplier = lambda step: warmup_cosine(step, warmup, decay_steps, floor)  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    return optimizer, scheduler
