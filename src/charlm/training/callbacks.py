"""Training callbacks of our own: a validation at the last step, a line in train.log and a text sample in
TensorBoard at every validation, Ctrl-C and SIGTERM that save before they stop, and checkpoints that
survive a moved folder."""

import contextlib
import logging
import math
import os
import signal
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from charlm.core.errors import CharLMError, log
from charlm.core.generation import sample_text, visible
from charlm.core.vocab import listed
from charlm.inference.pictures import attention_grid, attention_maps, influence, influence_strip
from charlm.inference.torch_runner import TorchRunner
from charlm.training.internals import align_logging_step
from charlm.training.trackers import log_text


class FinalValidation(L.Callback):
    """Ends every run that reaches max_steps with a validation, and so with last.ckpt and a best
    checkpoint, even when max_steps is not a multiple of the validation interval. Lightning validates
    when a step sets `should_stop` (as max_time, early stopping and Ctrl-C do), but not when the step
    count runs out; asking it to stop at the last step makes that case the same."""

    def __init__(self):
        self.aligned = False

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if not self.aligned:  # a checkpoint saved by such a validation would resume logging one step early
            self.aligned = align_logging_step(trainer) or True

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if 0 <= trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class ValidationLog(L.Callback):
    """A line per validation in train.log (where the progress bar does not go), which a cluster job's log
    or `tail -f` shows while the run goes on. ddp_spawn trains in processes of its own, without the
    handlers Hydra gave the launching one: there rank zero appends to the run's train.log itself, with
    the launching process's format."""

    def __init__(self):
        # train.log's format where Hydra set up this process's logging (the logger's own NullHandler has none)
        self.formatter = next((handler.formatter for handler in log.handlers if handler.formatter), None)
        self.spawned_handler: logging.Handler | None = None
        self.spawned_level = logging.NOTSET  # the logger's level before the handler was added

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        unset = all(isinstance(handler, logging.NullHandler) for handler in log.handlers)  # a spawned process
        if self.formatter is not None and unset and trainer.is_global_zero:
            self.spawned_handler = logging.FileHandler(Path(trainer.default_root_dir) / "train.log", encoding="utf-8")
            self.spawned_handler.setFormatter(self.formatter)
            log.addHandler(self.spawned_handler)
            self.spawned_level = log.level
            log.setLevel(logging.INFO)  # as conf/config.yaml sets it

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.spawned_handler is not None:
            log.removeHandler(self.spawned_handler)
            log.setLevel(self.spawned_level)
            self.spawned_handler.close()
            self.spawned_handler = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss, best = trainer.callback_metrics.get("val/loss"), pl_module.best_val
        if trainer.sanity_checking or not trainer.is_global_zero or loss is None or best is None:
            return
        train = trainer.callback_metrics.get("train/loss")
        log.info(f"step {trainer.global_step}/{trainer.max_steps}: val/loss {loss.item():.4f}, val/bpc "
                 f"{loss.item() / math.log(2):.4f} (best {best['loss']:.4f} at step {best['step']})"
                 + (f"; train/loss {train.item():.4f}" if train is not None else ""))


class TextSampleCallback(L.Callback):
    """A generated sample in TensorBoard at every validation, from `prompt`: by default a newline,
    or the training text's first character when the text has no newline (DNA, one long line)."""

    def __init__(self, num_tokens: int = 200, temperature: float = 0.8, prompt: str | None = None, seed: int = 0):
        self.num_tokens = num_tokens
        self.temperature = temperature
        self.prompt = prompt
        self.seed = seed
        self.last_sample = ""

    def prompt_for(self, vocab, text_start: str = "") -> str:
        """The prompt to sample from, checked against the vocabulary."""
        if self.prompt is not None:
            if missing := vocab.unknown(self.prompt):
                raise CharLMError(f"callbacks.text_sample.prompt has characters the vocabulary lacks: "
                                  f"{listed(missing)}")
            return self.prompt
        return "\n" if "\n" in vocab.index else (text_start[:1] or vocab.chars[0])

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # before the first step: a prompt the vocabulary lacks must not end a run at its first validation
        first_id = trainer.datamodule.train_ids[0] if trainer.datamodule is not None else None
        text_start = pl_module.vocab.chars[int(first_id)] if first_id is not None else ""
        self.prompt = self.prompt_for(pl_module.vocab, text_start)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.num_tokens < 1:
            return
        # A fixed seed for each sample, so successive samples show the model changing, not the dice.
        with TorchRunner(pl_module.model) as runner:
            self.last_sample = sample_text(runner, pl_module.vocab, self.prompt, self.num_tokens,
                                           temperature=self.temperature, rng=np.random.default_rng(self.seed))
        log_text(trainer.loggers, visible(self.prompt + self.last_sample), trainer.global_step)


class InsidePictures(L.Callback):
    """At every validation, TensorBoard's Images tab gets what the model looks at for the first
    `characters` of the validation text: a GPT's attention heads (`inside/attention`: a row of heads
    per layer, white 0 to dark blue 1, as `charlm attention` draws them), or for other models how much
    each character sways the next prediction (`inside/influence`). Drawn as pixels, without a figure,
    to stay cheap. `enabled: false` turns it off."""

    def __init__(self, enabled: bool = True, characters: int = 64):
        self.enabled, self.characters = enabled, characters
        self.described = False  # the text the picture is of goes to TensorBoard once

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        boards = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not (self.enabled and boards and trainer.is_global_zero) or trainer.sanity_checking:
            return
        model, step = pl_module.model, trainer.global_step
        ids = [int(i) for i in trainer.datamodule.val_ids[:min(self.characters, model.block_size)]]
        training = model.training
        model.eval()
        try:
            with torch.compiler.set_stance("force_eager"):  # a compiled model would recompile for this pass
                if hasattr(model, "attention_maps"):
                    tag, image = "inside/attention", attention_grid(attention_maps(model, ids))
                else:
                    tag, image = "inside/influence", influence_strip(influence(model, ids))
        finally:
            model.train(training)
        for board in boards:
            board.experiment.add_image(tag, image, step, dataformats="HWC")
            if not self.described:
                text = pl_module.vocab.decode(ids).replace("\n", "⏎")
                board.experiment.add_text(tag, f"the first {len(ids)} characters of the validation text: `{text}`",
                                          step)
        self.described = True


class LearningRates(L.Callback):
    """One TensorBoard curve per optimizer, `lr/<optimizer>`, on logging steps. (Lightning's
    LearningRateMonitor draws one per parameter group: two identical curves for AdamW's decayed and
    undecayed groups.)"""

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if (trainer.global_step + 1) % trainer.log_every_n_steps:
            return
        rates = {}
        for optimizer in trainer.optimizers:
            # MuonWithAdamW: a curve for each of the two it steps
            parts = getattr(optimizer, "optimizers", {type(optimizer).__name__.lower(): optimizer})
            rates |= {f"lr/{name}": part.param_groups[0]["lr"] for name, part in parts.items()}
        for logger in trainer.loggers:
            logger.log_metrics(rates, step=trainer.global_step)


class StopNow(BaseException):
    """A second interrupt: leave at once. Not an Exception, so nothing on the way catches it as an error."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class GracefulInterrupt(L.Callback):
    """The first Ctrl-C (SIGINT) or SIGTERM (what SLURM, Kubernetes and other schedulers send before
    they kill a job) finishes the current step, saves `last.ckpt` and stops training after a final
    validation; a second one stops at once. SLURM's requeue signal (SIGUSR1, `#SBATCH --signal`) gets
    Lightning's handling (loggers flushed, hpc_ckpt_<n>.ckpt saved, the job requeued) at the end of the
    step, or of the validation batch, it lands in: run inside the signal handler, that flush waits
    forever for TensorBoard's writer lock when the signal lands while the interrupted code holds it.
    Single-process runs only: under DDP every process would have to agree on the step, so Lightning's
    own handling applies there."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REQUEUE = getattr(signal, "SIGUSR1", None)  # Lightning's default requeue signal; Windows has none

    def __init__(self):
        self.signum: int | None = None  # the signal that asked to stop
        self.saved_at: int | None = None
        self.requeue_pending = False
        self.previous_handlers = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size == 1:  # installed after Lightning's own SIGTERM handler, so this one answers
            self.previous_handlers = {signum: signal.signal(signum, self._request_stop) for signum in self.SIGNALS}
            if self.REQUEUE is not None and callable(signal.getsignal(self.REQUEUE)):  # Lightning's, under SLURM
                self.previous_handlers[self.REQUEUE] = signal.signal(self.REQUEUE, self._request_requeue)

    def _request_requeue(self, signum, frame) -> None:
        self.requeue_pending = True

    def _request_stop(self, signum, frame) -> None:
        if self.signum is not None:  # the second one
            raise StopNow(signum)
        self.signum = signum
        # os.write, not print: a handler that prints while the interrupted code is writing to stderr (a
        # progress bar's redraw) raises "reentrant call" from inside that write
        message = (f"\n{signal.Signals(signum).name}: finishing this step, saving a checkpoint, then stopping "
                   "(again to stop at once)\n")
        with contextlib.suppress(OSError):  # no standard error to write to
            os.write(2, message.encode())

    def requeue_if_asked(self) -> None:
        if self.requeue_pending:
            self.requeue_pending = False
            self.previous_handlers[self.REQUEUE](self.REQUEUE, None)

    def on_validation_batch_end(self, *args) -> None:  # a validation can outlast SLURM's warning: not after it
        self.requeue_if_asked()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        self.requeue_if_asked()
        if self.signum is not None and self.saved_at is None:
            # The loss is checked only on logging steps, so make sure a diverged model never
            # replaces the last good last.ckpt.
            if not all(torch.isfinite(p).all() for p in pl_module.parameters()):
                raise CharLMError("interrupted, but the weights are no longer finite (the loss diverged); "
                                  "last.ckpt was not replaced. Try a lower lr.")
            callback = trainer.checkpoint_callback
            folder = Path(callback.dirpath) if callback and callback.dirpath else Path(trainer.default_root_dir)
            trainer.save_checkpoint(folder / "last.ckpt", weights_only=False)
            self.saved_at = trainer.global_step
            trainer.should_stop = True  # Lightning then validates, and the checkpoint callbacks save

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.restore_handlers()

    def restore_handlers(self) -> None:
        for signum, handler in self.previous_handlers.items():
            signal.signal(signum, handler)
        self.previous_handlers = {}


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint for a run folder that may have moved since it was saved.

    Lightning forgets the best score when a resumed checkpoint was written in another folder, so a
    worse checkpoint could become the best. This re-roots the saved paths in the folder the run is in
    now and keeps the whole state."""

    @property
    def state_key(self) -> str:  # Lightning's own key, so checkpoints written before this class still resume
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("dirpath")
        if saved and self.dirpath and Path(saved) != Path(self.dirpath):
            state_dict = dict(state_dict, dirpath=self.dirpath)
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if key in state_dict:
                    state_dict[key] = self.moved(state_dict[key], saved)
            state_dict["best_k_models"] = {self.moved(path, saved): score
                                           for path, score in state_dict.get("best_k_models", {}).items()}
        super().load_state_dict(state_dict)

    def moved(self, path: str, saved_dirpath: str) -> str:
        """`path` as it is now: under this callback's folder if it was under the saved one."""
        if not path:
            return path
        try:
            return str(Path(self.dirpath) / Path(path).relative_to(saved_dirpath))
        except ValueError:  # saved somewhere else: leave it
            return path
