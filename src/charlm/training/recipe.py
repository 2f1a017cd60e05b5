"""The training recipe that Lightning and the bare benchmark loop share: the loss, the optimizer
(AdamW, or Muon for the blocks' matrices with AdamW for the rest) and the learning-rate schedule."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from charlm.core.run_config import OptimizerConfig
from charlm.training.muon import Muon


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


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon (charlm.training.muon, torch's update made faster) and torch.optim.AdamW stepped together as one
    optimizer, so that Lightning's automatic optimization, gradient clipping, precision plugins,
    checkpoints and the LR scheduler treat them as one. `param_groups` is the list of the two
    optimizers' own group dicts (Muon's first), so a scheduler's change of a group's lr reaches the
    optimizer that owns it."""

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW):
        self.optimizers = {"muon": muon, "adamw": adamw}
        super().__init__([p for group in self.own_groups() for p in group["params"]], {})
        self.param_groups = self.own_groups()

    def own_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    @property
    def state(self) -> dict:
        """Both optimizers' per-parameter state (a merged view; each optimizer keeps its own)."""
        return {p: s for optimizer in self.optimizers.values() for p, s in optimizer.state.items()}

    @state.setter
    def state(self, value) -> None:
        pass  # Optimizer.__init__ sets an empty one; the two optimizers hold the real state

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers.values():
            optimizer.step()
        return loss

    def state_dict(self) -> dict:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.keys() != self.optimizers.keys():
            raise ValueError(f"expected the state of {sorted(self.optimizers)}, got {sorted(state_dict)}")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state_dict[name])
        self.param_groups = self.own_groups()  # load_state_dict gave each optimizer new group dicts


def muon_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The hidden matrices Muon trains: the 2-D weights inside the model's blocks (attention and MLP
    projections, convolution kernels stored as (out, in * kernel) matrices). Embeddings, the output
    head, norms and biases stay with AdamW."""
    return [p for p in model.blocks.parameters() if p.requires_grad and p.dim() == 2]


def make_optimizer(model: nn.Module, optim: OptimizerConfig, max_steps: int, fused: bool = False):
    """The optimizer and its learning-rate schedule (warm-up + cosine, or warm-up-stable-decay), stepped
    per optimizer step. `adamw`: AdamW with weight decay on matrices only (linear, conv and embedding
    weights). `muon`: Muon (at `muon_lr`) for the blocks' matrices, AdamW (at `lr`) for the rest; one
    schedule scales both."""
    muon = muon_matrices(model) if optim.name == "muon" else []
    taken = {id(p) for p in muon}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": optim.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},  # biases, norm gains
    ]
    # fused on CUDA; elsewhere foreach: one kernel per group, not per tensor (docs/performance.md).
    optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), fused=fused, foreach=not fused)
    if muon:
        optimizer = MuonWithAdamW(Muon(muon, lr=optim.muon_lr, momentum=optim.muon_momentum,
                                       weight_decay=optim.muon_weight_decay, ns_steps=optim.muon_ns_steps,
                                       ns_dtype=optim.muon_dtype), optimizer)
    decay_steps, warmup, floor = optim.decay_steps or max_steps, optim.warmup_steps, optim.min_lr_ratio
    if optim.schedule == "wsd":
        multiplier = lambda step: warmup_stable_decay(step, warmup, decay_steps, floor, optim.decay_fraction)  # noqa: E731
    else:
        multiplier = lambda step: warmup_cosine(step, warmup, decay_steps, floor)  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    return optimizer, scheduler
