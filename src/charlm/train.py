"""A training run from a composed Hydra config: data, model, trainer, fit, report."""

import contextlib
import json
import math
import shlex
import signal
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from charlm.atomic import atomic_write, ensure_writable, hold_run_folder
from charlm.callbacks import FinalValidation, GracefulInterrupt, StopNow, TextSampleCallback
from charlm.checkpoint import load_model, read_checkpoint
from charlm.console import is_rank_zero, say
from charlm.devices import check_devices, compile_model, training_device, use_fast_kernels
from charlm.errors import Interrupted
from charlm.generation import sample_text
from charlm.lightning_module import TOKENS_KEY, LanguageModel
from charlm.memory import check_fits
from charlm.model_config import model_settings
from charlm.models import count_parameters
from charlm.muon import native_bfloat16, newton_schulz_dtype
from charlm.report import write_report
from charlm.resume import best_score, fine_tune_source, requeue_checkpoint, resume_checkpoint, run_folder_of
from charlm.run_config import prepare_run_config
from charlm.torch_runner import TorchRunner
from charlm.trainer import RunLogger, build_trainer


def command_line_overrides() -> list[str]:
    """This job's overrides from the command line, when Hydra started it."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def train(cfg: DictConfig) -> float:
    """Train as configured; returns the best validation loss (what a sweeper minimises)."""
    prepare_run_config(cfg, command_line_overrides())  # every value checked before anything is read
    check_devices(cfg)
    run_dir = Path(cfg.paths.run_dir)
    model_config, init = OmegaConf.to_container(cfg.model, resolve=True), None
    if cfg.init_from is not None:
        init, model_config = fine_tune_source(cfg)  # also sets cfg.block_size to the checkpoint's
    model_settings(model_config)  # a bad model option fails here, before the data is read
    use_fast_kernels(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data, fixed_vocab=init.vocab.chars if init else None)
    datamodule.setup("fit")  # read and check the text now, so bad data fails before anything else
    vocab = datamodule.vocab
    check_fits(model_config, len(vocab), cfg.batch_size, cfg.block_size, training_device(cfg), cpu_processes(cfg))
    ckpt_path = cfg.ckpt_path
    if ckpt_path is None and (requeued := requeue_checkpoint(run_dir)):
        ckpt_path = str(requeued)  # a SLURM job requeued into its own run folder
    ckpt_file, resumed = resume_checkpoint(ckpt_path, Path(cfg.paths.root) / "runs", model_config, vocab,
                                           cfg.optimizer.name)
    start_step = int(resumed.get("global_step", 0))
    if ckpt_file and start_step >= cfg.max_steps:
        say(f"{ckpt_file} is already at step {start_step}, and max_steps is {cfg.max_steps}: nothing to train, "
            "nothing changed. Give a larger max_steps to train on.", sys.stderr)
        best = best_score(resumed)
        return best if best is not None else math.inf
    if ckpt_file:
        if run_folder_of(ckpt_file):
            run_dir = run_folder_of(ckpt_file).resolve()  # carry on in the interrupted run's folder
            with open_dict(cfg):
                cfg.paths.run_dir = str(run_dir)
        say(f"resuming {ckpt_file} at step {start_step}; checkpoints and TensorBoard go to {run_dir}")
    ensure_writable(run_dir / "checkpoints")

    optimizer = optimizer_settings(cfg)
    module = LanguageModel(model=model_config, vocab=vocab.chars, vocab_mode=vocab.mode, optimizer=optimizer)
    if init is not None:
        module.model.load_state_dict(init.model.state_dict())
    if cfg.compile:
        example = torch.zeros(cfg.batch_size, cfg.block_size, dtype=torch.long, device=training_device(cfg))
        if compile_model(module.model, example, cfg.trainer.precision):
            say("compiled the model with torch.compile")
    n_params = count_parameters(module.model)
    say(f"run {cfg.name}: {model_config['name']}, {n_params:,} parameters ({n_params * 4 / 1e6:.2f} MB as float32), "
        f"vocabulary {vocab.describe()}, {len(datamodule.train_ids):,} train / {len(datamodule.val_ids):,} val / "
        f"{len(datamodule.splits['test']):,} test tokens, output in {run_dir}")
    if optimizer["name"] == "muon":
        device, why = training_device(cfg), ""
        if cfg.optimizer.muon_dtype == "auto":
            why = f" (muon_dtype=auto: the {device} {'has' if native_bfloat16(device) else 'lacks'} native bfloat16)"
        say(f"optimizer: Muon for the blocks' matrices, Newton-Schulz in {optimizer['muon_dtype']}{why}; AdamW for "
            "the rest")
    receptive_field = getattr(module.model, "receptive_field", None)
    if receptive_field is not None:
        say(f"receptive field: {receptive_field} characters (block_size {cfg.block_size})")
        if receptive_field < cfg.block_size:
            say(f"warning: the receptive field ({receptive_field}) is shorter than block_size ({cfg.block_size}): "
                "later positions cannot use the whole block; add layers or a longer dilation cycle", sys.stderr)

    # FinalValidation is not a config option: every run ends validated and checkpointed.
    callbacks = [instantiate(c) for c in cfg.callbacks.values()] + [FinalValidation()]
    interrupt = next((c for c in callbacks if isinstance(c, GracefulInterrupt)), None)
    with hold_run_folder(run_dir) if is_rank_zero() else contextlib.nullcontext():  # one lock per run
        trainer = build_trainer(cfg, callbacks=callbacks, logger=instantiate(cfg.logger))
        start_time = time.perf_counter()
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_file) if ckpt_file else None)
        except StopNow as stop:
            raise Interrupted(f"{signal.Signals(stop.signum).name} again: stopped at once; {run_dir / 'checkpoints'} "
                              f"holds the last saved step; resume with the same arguments plus ckpt_path={run_dir}",
                              128 + stop.signum) from None
        seconds = time.perf_counter() - start_time
        if not trainer.is_global_zero:
            return math.inf
        interrupted = interrupt is not None and interrupt.saved_at is not None
        best = report_run(cfg, model_config, optimizer, trainer, run_dir, n_params, start_step, seconds, interrupted)
    if interrupted:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            write_report(HydraConfig.get().sweep.dir)  # the sweep ends here: report the jobs that ran
        raise Interrupted(f"{signal.Signals(interrupt.signum).name}: saved {run_dir / 'checkpoints' / 'last.ckpt'} "
                          f"at step {interrupt.saved_at}; resume with the same arguments plus ckpt_path={run_dir}",
                          128 + interrupt.signum)
    return best


def optimizer_settings(cfg: DictConfig) -> dict:
    """The optimizer group as plain values, with Muon's `auto` dtype resolved for the training device once,
    so every process of the run, its summary and its HParams agree on it."""
    settings = OmegaConf.to_container(cfg.optimizer, resolve=True)
    if settings["name"] == "muon":
        dtype = newton_schulz_dtype(settings["muon_dtype"], training_device(cfg))
        settings["muon_dtype"] = str(dtype).removeprefix("torch.")
    return settings


def cpu_processes(cfg: DictConfig) -> int:
    """Training processes sharing this machine's RAM: DDP on the CPU runs one per device."""
    devices = cfg.trainer.devices
    return devices if training_device(cfg) == "cpu" and isinstance(devices, int) else 1


def final_state(trainer: L.Trainer, run_dir: Path) -> tuple[int, float, str, int | None]:
    """(global step, best val/loss, best checkpoint, tokens trained on if counted) as saved in last.ckpt. Read from
    disk because with ddp_spawn the training ran in child processes and this process's trainer never advanced."""
    last = run_dir / "checkpoints" / "last.ckpt"
    callback = trainer.checkpoint_callback
    if not last.is_file() or callback is None:
        score = callback.best_model_score if callback else None
        return trainer.global_step, float(score) if score is not None else math.nan, "", None
    checkpoint = read_checkpoint(last)
    state = next((v for k, v in checkpoint.get("callbacks", {}).items()
                  if k.startswith("ModelCheckpoint") and "'monitor': 'val/loss'" in k), {})
    score = state.get("best_model_score")
    return (int(checkpoint["global_step"]), float(score) if score is not None else math.nan,
            state.get("best_model_path", ""), checkpoint.get(TOKENS_KEY))


def run_settings(cfg: DictConfig, model_config: dict, optimizer: dict) -> dict:
    """A run's settings as flat plain values, for comparing runs by them (TensorBoard's HParams)."""
    settings = {"model": model_config["name"], **{f"model.{k}": v for k, v in model_config.items() if k != "name"}}
    for key in ("lr", "batch_size", "block_size", "max_steps", "seed"):
        settings[key] = cfg[key]
    settings |= {f"optimizer.{k}": v for k, v in optimizer.items()}
    settings |= {"data.path": cfg.data.path, "data.vocab": cfg.data.vocab, "precision": str(cfg.trainer.precision)}
    plain = (bool, int, float, str)
    return {k: v if isinstance(v, plain) else str(v) for k, v in settings.items()}


def report_run(cfg: DictConfig, model_config: dict, optimizer: dict, trainer: L.Trainer, run_dir: Path,
               n_params: int, start_step: int, seconds: float, interrupted: bool) -> float:
    """Write summary.json and print the end-of-run summary with a sample from the best checkpoint."""
    step, best_loss, best_path, total_tokens = final_state(trainer, run_dir)
    tokens_per_step = trainer.accumulate_grad_batches * cfg.batch_size * cfg.block_size * trainer.world_size
    tokens = (step - start_step) * tokens_per_step  # this call's; total_tokens spans resumes at other batch sizes
    status = "interrupted" if interrupted else "finished" if step >= cfg.max_steps else "stopped early"
    summary = {
        "name": cfg.name, "model": model_config["name"], "seed": cfg.seed, "parameters": n_params, "steps": step,
        "tokens": step * tokens_per_step if total_tokens is None else int(total_tokens),
        "best_val_loss": best_loss, "best_val_bpc": best_loss / math.log(2),
        "tokens_per_s": tokens / seconds, "wall_time_s": seconds, "best_checkpoint": best_path, "status": status,
        "optimizer": optimizer["name"], "muon_dtype": optimizer.get("muon_dtype"),
    }
    atomic_write(run_dir / "summary.json", lambda file: file.write((json.dumps(summary, indent=2) + "\n").encode()))
    results = {"hparams/best_val_loss": best_loss, "hparams/best_val_bpc": summary["best_val_bpc"],
               "hparams/parameters": n_params, "hparams/tokens_per_s": summary["tokens_per_s"]}
    for logger in trainer.loggers:  # TensorBoard's HParams tab: every run of a sweep side by side
        logger.log_hyperparams(run_settings(cfg, model_config, optimizer),
                               {k: v for k, v in results.items() if math.isfinite(v)})
        if isinstance(logger, RunLogger):
            logger.close()
    sample = ""
    if best_path:
        sampler = next((c for c in trainer.callbacks if isinstance(c, TextSampleCallback)), TextSampleCallback())
        best = load_model(best_path)
        with TorchRunner(best.model) as runner:
            sample = sample_text(runner, best.vocab, sampler.prompt_for(best.vocab), max(sampler.num_tokens, 200),
                                 temperature=sampler.temperature, rng=np.random.default_rng(sampler.seed))
    metrics = trainer.callback_metrics
    say("\n".join([
        f"trained {step - start_step} steps, {tokens:,} tokens in {seconds:.1f} s: "
        f"{tokens / seconds:,.0f} tokens/s (validation included)",
        f"final train/loss {float(metrics.get('train/loss', math.nan)):.4f}, "
        f"val/loss {float(metrics.get('val/loss', math.nan)):.4f}, best val/loss {best_loss:.4f}",
        f"best checkpoint: {best_path or '-'}",
        "sample:", sample,
        "", *next_commands(run_dir),
    ]))
    return best_loss if not math.isnan(best_loss) else math.inf


def next_commands(run_dir: Path) -> list[str]:
    """What to do with a finished run, ready to paste: sample, score, look (a sweep: all its runs)."""
    sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    logdir, ckpt = shlex.quote(str(HydraConfig.get().sweep.dir if sweep else run_dir)), shlex.quote(f"ckpt={run_dir}")
    return ["next:", f"  python sample.py {ckpt}", f"  python evaluate.py {ckpt}", f"  tensorboard --logdir {logdir}"]

