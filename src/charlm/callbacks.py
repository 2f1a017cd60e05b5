"""Training callbacks of our own: a validation at the last step, a text sample in TensorBoard at every
validation, and Ctrl-C that saves before it stops."""

import signal
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from charlm.errors import CharLMError
from charlm.generation import sample_text
from charlm.torch_runner import TorchRunner


class FinalValidation(L.Callback):
    """Ends every run that reaches max_steps with a validation, and so with last.ckpt and a best
    checkpoint, even when max_steps is not a multiple of the validation interval. Lightning validates
    when a step sets `should_stop` (as max_time, early stopping and Ctrl-C do), but not when the step
    count runs out; asking it to stop at the last step makes that case the same."""

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if 0 <= trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class TextSampleCallback(L.Callback):
    def __init__(self, num_tokens: int = 200, temperature: float = 0.8, prompt: str = "\n", seed: int = 0):
        self.num_tokens = num_tokens
        self.temperature = temperature
        self.prompt = prompt
        self.seed = seed
        self.last_sample = ""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.num_tokens < 1:
            return
        # A fixed seed for each sample, so successive samples show the model changing, not the dice.
        with TorchRunner(pl_module.model) as runner:
            self.last_sample = sample_text(runner, pl_module.vocab, self.prompt, self.num_tokens,
                                           temperature=self.temperature, rng=np.random.default_rng(self.seed))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # Indented lines render as a code block in TensorBoard, which keeps line breaks.
                markdown = "\n".join("    " + line for line in (self.prompt + self.last_sample).splitlines())
                logger.experiment.add_text("sample", markdown, trainer.global_step)


class GracefulInterrupt(L.Callback):
    """The first Ctrl-C (SIGINT) finishes the current step, saves `last.ckpt` and stops training;
    a second one interrupts at once. Single-process runs only: under DDP every process would have to
    agree on the step, so Lightning's own handling applies there."""

    def __init__(self):
        self.requested = False
        self.saved_at: int | None = None
        self.previous_handler = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size == 1:
            self.previous_handler = signal.signal(signal.SIGINT, self._request_stop)

    def _request_stop(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
        print("\ninterrupt: finishing this step, saving a checkpoint, then stopping", flush=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.requested and self.saved_at is None:
            # The loss is checked only on logging steps, so make sure a diverged model never
            # replaces the last good last.ckpt.
            if not all(torch.isfinite(p).all() for p in pl_module.parameters()):
                raise CharLMError("interrupted, but the weights are no longer finite (the loss diverged); "
                                  "last.ckpt was not replaced. Try a lower lr.")
            callback = trainer.checkpoint_callback
            folder = Path(callback.dirpath) if callback and callback.dirpath else Path(trainer.default_root_dir)
            trainer.save_checkpoint(folder / "last.ckpt")
            self.saved_at = trainer.global_step
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.previous_handler is not None:
            signal.signal(signal.SIGINT, self.previous_handler)
            self.previous_handler = None
