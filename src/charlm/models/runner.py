"""Lets the NumPy sampling loop (charlm.sampling) drive a torch model."""

import numpy as np
import torch
from torch import nn


class TorchRunner:
    """Takes and returns NumPy arrays; runs the model in eval mode under inference_mode."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.block_size = model.block_size
        self.device = next(model.parameters()).device
        self.has_cache = hasattr(model, "forward_cached")

    def __enter__(self) -> "TorchRunner":
        self.was_training = self.model.training
        self.model.eval()
        return self

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)

    def _ids(self, ids: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(ids, dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def logits(self, ids: np.ndarray) -> np.ndarray:
        return self.model(self._ids(ids))[:, -1].float().cpu().numpy()  # (B, V)

    @torch.inference_mode()
    def forward_cached(self, ids: np.ndarray, cache):
        logits, cache = self.model.forward_cached(self._ids(ids), cache)
        return logits[:, -1].float().cpu().numpy(), cache  # (B, V)
