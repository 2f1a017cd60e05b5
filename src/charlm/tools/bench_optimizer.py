"""The optimizer benchmark (`python -m charlm bench optimizer`): where a training step's time goes with
optimizer=muon. For each case, the model's forward and backward pass on one batch, AdamW's step over
every parameter (optimizer=adamw), and the Muon part of optimizer=muon (the blocks' matrices) in each
Newton-Schulz dtype, beside torch.optim.Muon on the same matrices. Parts alternate in rounds, so drifting
load hits all of them alike; each figure is a median."""

import statistics
import time
from dataclasses import replace

import torch
from omegaconf import OmegaConf

from charlm.core.run_config import OptimizerConfig, group_settings
from charlm.models import build_model, count_parameters
from charlm.training.muon import Muon, newton_schulz_dtype
from charlm.training.recipe import make_optimizer, muon_matrices, next_token_loss

VOCAB_SIZE = 65


def median_ms(function, repeats: int, budget_s: float) -> list[float]:
    """Times of up to `repeats` calls (ms), stopping early once `budget_s` is spent (at least 3 calls)."""
    times, spent = [], 0.0
    while len(times) < repeats and (len(times) < 3 or spent < budget_s):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1e3)
        spent += times[-1] / 1e3
    return times


def optimizer_case(cfg, case: str, repeats: int, rounds: int) -> dict:
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), vocab_size=VOCAB_SIZE)
    settings = group_settings(OptimizerConfig, cfg.optimizer)
    adamw, _ = make_optimizer(model, replace(settings, name="adamw"), cfg.max_steps)
    matrices = muon_matrices(model)
    muon = {"lr": settings.muon_lr, "momentum": settings.muon_momentum}
    parts = {
        "adamw": adamw.step,
        "float32": Muon(matrices, ns_dtype="float32", **muon).step,
        "bfloat16": Muon(matrices, ns_dtype="bfloat16", **muon).step,
        "torch": torch.optim.Muon(matrices, **muon).step,
    }
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB_SIZE, (cfg.batch_size, cfg.block_size + 1), generator=generator)

    def forward_backward():
        model.zero_grad(set_to_none=False)
        next_token_loss(model, (ids[:, :-1], ids[:, 1:])).backward()

    parts = {"forward_backward": forward_backward, **parts}
    forward_backward()
    for step in parts.values():  # warm-up: kernels chosen, optimizer state allocated
        step()
    times = {name: [] for name in parts}
    for _ in range(rounds):
        for name, function in parts.items():
            times[name] += median_ms(function, repeats, budget_s=20.0 / rounds)
    ms = {name: statistics.median(values) for name, values in times.items()}
    auto = str(newton_schulz_dtype("auto", "cpu")).removeprefix("torch.")
    return {
        "case": case, "parameters": count_parameters(model), "tokens_per_step": cfg.batch_size * cfg.block_size,
        "muon_matrices": len(matrices), "muon_weights": sum(p.numel() for p in matrices),
        "forward_backward_ms": ms["forward_backward"], "adamw_step_ms": ms["adamw"],
        "muon_float32_ms": ms["float32"], "muon_bfloat16_ms": ms["bfloat16"], "torch_muon_ms": ms["torch"],
        "auto_dtype": auto, "muon_auto_over_forward_backward": ms[auto] / ms["forward_backward"],
        "threads": torch.get_num_threads(),
    }
