"""The one LightningModule: trains any model in `charlm.models` on next-character prediction."""

import math

import lightning as L
import torch
import torch.nn.functional as F

from charlm.errors import CharLMError
from charlm.models import build_model
from charlm.vocab import Vocabulary


def warmup_cosine(step: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up to 1, cosine decay to `min_lr_ratio`, then flat."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, decay_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LanguageModel(L.LightningModule):
    """Holds a model, its vocabulary and the optimizer settings; all three are saved in checkpoints."""

    def __init__(self, model: dict, vocab: str, optimizer: dict):
        super().__init__()
        self.save_hyperparameters()  # plain dicts and a string: load_from_checkpoint needs nothing else
        self.model = build_model(model, vocab_size=len(vocab))
        self.vocab = Vocabulary(vocab)
        self.optim = dict(optimizer)
        if self.optim["lr"] <= 0:
            raise CharLMError(f"lr must be positive, got {self.optim['lr']}")

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch  # (B, T) each
        logits = self.model(inputs)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self.loss(batch)
        batch_size = batch[0].shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log("val/bpc", loss / math.log(2), batch_size=batch_size, sync_dist=True)

    def configure_optimizers(self):
        opt = self.optim
        # Decay matrices (linear and embedding weights) only; biases and norm gains stay undecayed.
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": opt["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(
            groups, lr=opt["lr"], betas=tuple(opt["betas"]), fused=self.device.type == "cuda"
        )
        decay_steps = opt.get("decay_steps") or self.trainer.max_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(step, opt["warmup_steps"], decay_steps, opt["min_lr_ratio"]),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
