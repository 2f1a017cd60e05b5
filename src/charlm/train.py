"""A training run from a composed Hydra config: data, model, trainer, fit, report."""

import json
import math
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from charlm.callbacks import FinalValidation, GracefulInterrupt, TextSampleCallback
from charlm.checkpoint import load_model, read_checkpoint
from charlm.console import say
from charlm.devices import compile_model, training_device, use_fast_kernels
from charlm.generation import sample_text
from charlm.lightning_module import LanguageModel
from charlm.models import count_parameters
from charlm.resume import fine_tune_source, resume_checkpoint, run_folder_of
from charlm.run_config import prepare_run_config
from charlm.torch_runner import TorchRunner
from charlm.trainer import build_trainer


def command_line_overrides() -> list[str]:
    """This job's overrides from the command line, when Hydra started it."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def train(cfg: DictConfig) -> float:
    """Train as configured; returns the best validation loss (what a sweeper minimises)."""
    prepare_run_config(cfg, command_line_overrides())
    use_fast_kernels(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = Path(cfg.paths.run_dir)

    model_config, init = OmegaConf.to_container(cfg.model, resolve=True), None
    if cfg.init_from is not None:
        init, model_config = fine_tune_source(cfg)  # also sets cfg.block_size to the checkpoint's
    datamodule = instantiate(cfg.data, vocab=init.vocab.chars if init else None)
    datamodule.setup("fit")  # read and check the text now, so bad data fails before anything else
    module = LanguageModel(model=model_config, vocab=datamodule.vocab.chars,
                           optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True))
    if init is not None:
        module.model.load_state_dict(init.model.state_dict())
    ckpt_path, start_step = resume_checkpoint(cfg.ckpt_path, Path(cfg.paths.root) / "runs", model_config,
                                              datamodule.vocab.chars)
    if ckpt_path and run_folder_of(ckpt_path):
        run_dir = run_folder_of(ckpt_path).resolve()  # carry on in the interrupted run's folder
        with open_dict(cfg):
            cfg.paths.run_dir = str(run_dir)
        say(f"resuming {ckpt_path} at step {start_step}; checkpoints and TensorBoard stay in {run_dir}")
    if cfg.compile:
        example = torch.zeros(cfg.batch_size, cfg.block_size, dtype=torch.long, device=training_device(cfg))
        if compile_model(module.model, example, cfg.trainer.precision):
            say("compiled the model with torch.compile")
    n_params = count_parameters(module.model)
    say(f"run {cfg.name}: {model_config['name']}, {n_params:,} parameters ({n_params * 4 / 1e6:.2f} MB as float32), "
        f"vocabulary {len(datamodule.vocab)}, {len(datamodule.train_ids):,} train / "
        f"{len(datamodule.val_ids):,} val characters, output in {run_dir}")
    receptive_field = getattr(module.model, "receptive_field", None)
    if receptive_field is not None:
        say(f"receptive field: {receptive_field} characters (block_size {cfg.block_size})")
        if receptive_field < cfg.block_size:
            say(f"warning: the receptive field ({receptive_field}) is shorter than block_size ({cfg.block_size}): "
                "later positions cannot use the whole block; add layers or a longer dilation cycle", sys.stderr)

    # FinalValidation is not a config option: every run ends validated and checkpointed.
    callbacks = [instantiate(c) for c in cfg.callbacks.values()] + [FinalValidation()]
    trainer = build_trainer(cfg, callbacks=callbacks, logger=instantiate(cfg.logger))
    start_time = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    seconds = time.perf_counter() - start_time
    if not trainer.is_global_zero:
        return math.inf
    best = report_run(cfg, model_config["name"], trainer, run_dir, n_params, start_step, seconds)
    interrupt = next((c for c in callbacks if isinstance(c, GracefulInterrupt)), None)
    if interrupt and interrupt.saved_at is not None:
        say(f"interrupted: saved {run_dir / 'checkpoints' / 'last.ckpt'} at step {interrupt.saved_at}; "
            f"resume with the same arguments plus ckpt_path={run_dir}", sys.stderr)
        sys.exit(130)
    return best


def final_state(trainer: L.Trainer, run_dir: Path) -> tuple[int, float, str]:
    """(global step, best val/loss, best checkpoint) as saved in last.ckpt. Read from disk because
    with ddp_spawn the training ran in child processes and this process's trainer never advanced."""
    last = run_dir / "checkpoints" / "last.ckpt"
    callback = trainer.checkpoint_callback
    if not last.is_file() or callback is None:
        score = callback.best_model_score if callback else None
        return trainer.global_step, float(score) if score is not None else math.nan, ""
    checkpoint = read_checkpoint(last)
    state = next((v for k, v in checkpoint.get("callbacks", {}).items()
                  if k.startswith("ModelCheckpoint") and "'monitor': 'val/loss'" in k), {})
    score = state.get("best_model_score")
    return int(checkpoint["global_step"]), float(score) if score is not None else math.nan, state.get(
        "best_model_path", "")


def report_run(cfg: DictConfig, model_name: str, trainer: L.Trainer, run_dir: Path, n_params: int,
               start_step: int, seconds: float) -> float:
    """Write summary.json and print the end-of-run summary with a sample from the best checkpoint."""
    step, best_loss, best_path = final_state(trainer, run_dir)
    tokens_per_step = trainer.accumulate_grad_batches * cfg.batch_size * cfg.block_size * trainer.world_size
    tokens = (step - start_step) * tokens_per_step
    summary = {
        "name": cfg.name, "model": model_name, "seed": cfg.seed, "parameters": n_params, "steps": step,
        "tokens": step * tokens_per_step, "best_val_loss": best_loss, "best_val_bpc": best_loss / math.log(2),
        "tokens_per_s": tokens / seconds, "wall_time_s": seconds, "best_checkpoint": best_path,
        "status": "finished" if step >= cfg.max_steps else "stopped early",
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    sample = ""
    if best_path:
        sampler = next((c for c in trainer.callbacks if isinstance(c, TextSampleCallback)), TextSampleCallback())
        best = load_model(best_path)
        with TorchRunner(best.model) as runner:
            sample = sample_text(runner, best.vocab, sampler.prompt, max(sampler.num_tokens, 200),
                                 temperature=sampler.temperature, rng=np.random.default_rng(sampler.seed))
    metrics = trainer.callback_metrics
    say("\n".join([
        f"trained {step - start_step} steps, {tokens:,} tokens in {seconds:.1f} s: "
        f"{tokens / seconds:,.0f} tokens/s (validation included)",
        f"final train/loss {float(metrics.get('train/loss', math.nan)):.4f}, "
        f"val/loss {float(metrics.get('val/loss', math.nan)):.4f}, best val/loss {best_loss:.4f}",
        f"best checkpoint: {best_path or '-'}",
        "sample:", sample,
    ]))
    return best_loss if not math.isnan(best_loss) else math.inf
