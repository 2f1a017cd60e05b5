"""The one LightningModule: trains any model in `charlm.models` on next-character prediction."""

import math
import random
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics import MeanMetric

from charlm.core.errors import CharLMError
from charlm.core.run_config import OptimizerConfig
from charlm.core.vocab import Vocabulary
from charlm.inference.checkpoint import BEST_KEY, TOKENS_KEY, WALL_KEY
from charlm.models import build_model
from charlm.training.internals import set_plain_attribute
from charlm.training.recipe import make_optimizer, next_token_loss


class LanguageModel(L.LightningModule):
    """Holds a model, its vocabulary and the optimizer settings; all three are saved in checkpoints."""

    def __init__(self, model: dict, vocab: str, optimizer: dict, vocab_mode: str = "chars"):
        super().__init__()
        # Plain dicts and strings, in checkpoints; TensorBoard gets flat settings at the run's end instead.
        self.save_hyperparameters(logger=False)
        self.model = build_model(model, vocab_size=len(vocab))
        self.vocab = Vocabulary(vocab, vocab_mode)
        self.optim = OptimizerConfig(**optimizer)  # defaults fill what older checkpoints did not record
        # Token-weighted mean over the whole validation set, summed across processes under DDP. A NaN
        # batch keeps it NaN, which stops the run (torchmetrics' default drops NaNs; "disable" the weights).
        self.val_loss = MeanMetric(nan_strategy=math.nan)
        self.tokens_trained = 0  # counted per batch: a resumed run may use another batch size
        self.best_val: dict | None = None
        self.processes = 1
        self.started_at = time.perf_counter()  # this call's start: train() sets it as it calls fit
        self.earlier_seconds: float | None = None  # resumed: the calls before (None: the checkpoint did not count)

    def wall_time(self) -> float:
        """Seconds the run has trained so far, this call and the ones it resumed."""
        return (self.earlier_seconds or 0.0) + time.perf_counter() - self.started_at

    def __setattr__(self, name, value):
        if not set_plain_attribute(self, name, value):  # Lightning's per-hook name, cheaply (charlm.training.internals)
            super().__setattr__(name, value)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def on_train_start(self) -> None:
        self.processes = self.trainer.world_size  # each process counts the global batch

    def training_step(self, batch, batch_idx):
        loss = next_token_loss(self.model, batch)
        if self.tokens_trained is None:  # resumed from a checkpoint that did not count: assume this batch size
            self.tokens_trained = self.trainer.global_step * batch[1].numel() * self.processes
        self.tokens_trained += batch[1].numel() * self.processes
        # Check and log only on the steps the logger writes (every log_every_n_steps): a self.log
        # call costs about 1 ms, as much as a 0.2M forward pass on CPU, and reading the loss on a
        # GPU waits for the step to finish. A non-finite loss poisons the weights, so the
        # validation check (on_validation_epoch_end) still stops the run before any checkpoint.
        if (self.trainer.global_step + 1) % self.trainer.log_every_n_steps == 0:
            if not torch.isfinite(loss):
                self.stop_non_finite("training", loss, self.trainer.global_step + 1)
            self.log("train/loss", loss, prog_bar=True, batch_size=batch[1].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        self.val_loss.update(next_token_loss(self.model, batch), weight=batch[1].numel())

    def on_validation_epoch_end(self):
        loss = self.val_loss.compute()
        self.val_loss.reset()
        if not torch.isfinite(loss) and not self.trainer.sanity_checking:  # before checkpoints are saved
            self.stop_non_finite("validation", loss, self.trainer.global_step)
        if not self.trainer.sanity_checking and (self.best_val is None or loss.item() < self.best_val["loss"]):
            self.best_val = {"loss": loss.item(), "step": self.trainer.global_step}
        # Already the global mean; sync_dist only averages identical values (and keeps Lightning quiet).
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/bpc", loss / math.log(2), sync_dist=True)

    def stop_non_finite(self, what: str, loss: torch.Tensor, step: int):
        callback = self.trainer.checkpoint_callback
        last = Path(callback.dirpath) / "last.ckpt" if callback and callback.dirpath else None
        where = str(last) if last and last.is_file() else "none yet"
        raise CharLMError(f"{what} loss became {loss.item()} at step {step}; stopped. "
                          f"Last good checkpoint: {where}. Try a lower lr.")

    # Random states travel with checkpoints, so a resumed run draws the same dropout masks.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[TOKENS_KEY] = self.tokens_trained
        checkpoint[BEST_KEY] = self.best_val
        checkpoint[WALL_KEY] = self.wall_time()
        # Plain types and tensors only, so checkpoints still load with torch.load(weights_only=True).
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                                    "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokens_trained = checkpoint.get(TOKENS_KEY)
        self.best_val = checkpoint.get(BEST_KEY)
        self.earlier_seconds = checkpoint.get(WALL_KEY)
        states = checkpoint.get("rng_states")
        if states:
            torch.set_rng_state(states["torch"])
            kind, keys, pos, has_gauss, cached = states["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
            random.setstate(states["python"])
            if "cuda" in states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # Lightning refuses to clip a fused optimizer under mixed precision, because its 16-bit
        # plugin leaves fused optimizers to unscale their own gradients inside step(). Unscale
        # here first (a GradScaler's step() accepts already-unscaled gradients), then clip.
        if not gradient_clip_val:
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None and optimizer.defaults.get("fused"):  # others were unscaled by Lightning
            scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if gradient_clip_algorithm == "value":
            nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def configure_optimizers(self):
        optimizer, scheduler = make_optimizer(self.model, self.optim, self.trainer.max_steps,
                                              fused=self.device.type == "cuda")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
