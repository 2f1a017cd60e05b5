"""Where a 0.2M training step's time goes with optimizer=muon on CPU: forward + backward, AdamW's
step over all parameters, and Muon's step (16 matrices, one at a time) beside AdamW's for the rest.
Medians of 180 timed repeats, one thread. Run: python docs/muon_cost.py"""

import statistics
import time

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from charlm.models import build_model
from charlm.recipe import make_optimizer


def timed(fn, repeats: int = 200) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times[20:]) * 1e3  # ms, after warm-up


torch.set_num_threads(1)
with initialize_config_module("charlm.conf", version_base="1.3"):
    cfg = compose("config", overrides=["experiment=gpt_0.2m"])
model = build_model(OmegaConf.to_container(cfg.model, resolve=True), vocab_size=65)
settings = OmegaConf.to_container(cfg.optimizer, resolve=True)
muon, _ = make_optimizer(model, settings, 5000)
adamw, _ = make_optimizer(model, {**settings, "name": "adamw"}, 5000)
ids = torch.randint(0, 65, (16, 32))


def forward_backward():
    model.zero_grad(set_to_none=False)
    torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()


forward_backward()
muon_part, adamw_part = muon.optimizers["muon"], muon.optimizers["adamw"]
matrices = [p for group in muon_part.param_groups for p in group["params"]]
print(f"matrices under Muon: {len(matrices)} ({sum(p.numel() for p in matrices):,} weights)")
print(f"forward+backward {timed(forward_backward):.2f} ms | AdamW step, all parameters {timed(adamw.step):.2f} ms")
print(f"Muon+AdamW step {timed(muon.step):.2f} ms: Muon part {timed(muon_part.step):.2f} ms, "
      f"AdamW part {timed(adamw_part.step):.2f} ms")
