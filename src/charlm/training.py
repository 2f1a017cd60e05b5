"""A training run from a composed Hydra config: data, model, trainer, fit, report."""

import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from charlm.callbacks import TextSampleCallback
from charlm.checkpoint import find_checkpoint, read_checkpoint
from charlm.errors import CharLMError
from charlm.lit import LanguageModel
from charlm.models import count_parameters

# Lightning chatter that says nothing about this run.
NOISE = ("💡 Tip", "Trainer already configured with model summary")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not record.getMessage().startswith(NOISE)
)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temp file beside the target, fsync, then rename: a crash never leaves half a file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)


@rank_zero_only
def say(message: str, stream=None) -> None:
    print(message, file=stream or sys.stdout, flush=True)


def check_run_config(cfg: DictConfig) -> None:
    """Top-level values every run needs, checked before any data is read or model built."""
    for key in ("max_steps", "eval_interval", "batch_size", "block_size"):
        value = cfg[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CharLMError(f"{key} must be a positive integer, got {value!r}")
    if not isinstance(cfg.lr, (int, float)) or cfg.lr <= 0:
        raise CharLMError(f"lr must be a positive number, got {cfg.lr!r}")
    if cfg.threads is not None and (not isinstance(cfg.threads, int) or cfg.threads < 1):
        raise CharLMError(f"threads must be a positive integer or null, got {cfg.threads!r}")
    if cfg.optimizer.warmup_steps < 0 or not 0 <= cfg.optimizer.min_lr_ratio <= 1:
        raise CharLMError("optimizer.warmup_steps must be >= 0 and optimizer.min_lr_ratio in [0, 1]")


def resume_checkpoint(ckpt_path: str | None, module: LanguageModel) -> tuple[str | None, int]:
    """Resolve `ckpt_path` (a file or a run folder), check it fits this model and vocabulary.

    Returns the checkpoint file (None for a fresh run) and the step it was saved at.
    """
    if ckpt_path is None:
        return None, 0
    path = Path(ckpt_path).expanduser()
    last = path / "checkpoints" / "last.ckpt"
    file = last if last.is_file() else find_checkpoint(path)
    checkpoint = read_checkpoint(file)
    saved = checkpoint["hyper_parameters"]
    if saved["vocab"] != module.hparams.vocab:
        raise CharLMError(f"cannot resume from {file}: it was trained on a different vocabulary (other data)")
    if dict(saved["model"]) != dict(module.hparams.model):
        changed = sorted(k for k in saved["model"].keys() | module.hparams.model.keys()
                         if saved["model"].get(k) != module.hparams.model.get(k))
        here = module.hparams.model
        diffs = ", ".join(f"{k}: {saved['model'].get(k)!r} there, {here.get(k)!r} here" for k in changed)
        raise CharLMError(f"cannot resume from {file}: its model differs ({diffs})")
    return str(file), int(checkpoint.get("global_step", 0))


def train(cfg: DictConfig) -> float:
    """Train as configured; returns the best validation loss (what a sweeper minimises)."""
    check_run_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = Path(cfg.paths.run_dir)

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # read and check the text now, so bad data fails before anything else
    module = LanguageModel(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        vocab=datamodule.vocab.chars,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
    )
    ckpt_path, start_step = resume_checkpoint(cfg.ckpt_path, module)
    n_params = count_parameters(module.model)
    say(f"run {cfg.name}: {cfg.model.name}, {n_params:,} parameters ({n_params * 4 / 1e6:.2f} MB as float32), "
        f"vocabulary {len(datamodule.vocab)}, {len(datamodule.train_ids):,} train / "
        f"{len(datamodule.val_ids):,} val characters, output in {run_dir}")
    receptive_field = getattr(module.model, "receptive_field", None)
    if receptive_field is not None:
        say(f"receptive field: {receptive_field} characters (block_size {cfg.block_size})")
        if receptive_field < cfg.block_size:
            say(f"warning: the receptive field ({receptive_field}) is shorter than block_size ({cfg.block_size}): "
                "later positions cannot use the whole block; add layers or a longer dilation cycle", sys.stderr)

    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate(cfg.logger),
                          plugins=[AtomicCheckpointIO()])
    start_time = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - start_time
    steps = trainer.global_step - start_step

    best = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    metrics = trainer.callback_metrics
    sample = next((c.last_sample for c in callbacks if isinstance(c, TextSampleCallback)), "")
    tokens_per_step = trainer.accumulate_grad_batches * cfg.batch_size * cfg.block_size * trainer.world_size
    tokens = steps * tokens_per_step
    best_loss = float(best) if best is not None else math.nan
    summary = {
        "name": cfg.name, "model": cfg.model.name, "parameters": n_params, "steps": trainer.global_step,
        "tokens": trainer.global_step * tokens_per_step, "best_val_loss": best_loss,
        "best_val_bpc": best_loss / math.log(2), "tokens_per_s": tokens / seconds, "wall_time_s": seconds,
        "best_checkpoint": trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else "",
        "status": "finished" if trainer.global_step >= trainer.max_steps else "stopped early",
    }
    if trainer.is_global_zero:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    say("\n".join([
        f"trained {steps} steps, {tokens:,} tokens in {seconds:.1f} s: {tokens / seconds:,.0f} tokens/s "
        "(validation included)",
        f"final train/loss {float(metrics.get('train/loss', math.nan)):.4f}, "
        f"val/loss {float(metrics.get('val/loss', math.nan)):.4f}, "
        f"best val/loss {best_loss:.4f}",
        f"best checkpoint: {trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else '-'}",
        "sample:", sample,
    ]))
    return best_loss if best is not None else math.inf
