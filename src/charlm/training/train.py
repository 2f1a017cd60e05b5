"""A training run from a composed Hydra config, in four steps: plan, build, fit, report."""

import contextlib
import json
import math
import shlex
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from charlm.core.atomic import atomic_write, ensure_writable, system_error
from charlm.core.checks import clock_seconds
from charlm.core.cli import one_line, user_error
from charlm.core.errors import CharLMError, Interrupted, command_for
from charlm.core.generation import sample_text, visible
from charlm.core.model_config import model_settings
from charlm.core.run_config import RunKnobs, prepare_run_config
from charlm.core.run_folder import best_checkpoint, hold_run_folder, requeue_checkpoint, run_folder_of, saved_checkpoint
from charlm.core.sweep import NOT_SETTINGS, as_dict, in_sweep, job_overrides, setting_key
from charlm.core.vocab import Vocabulary
from charlm.inference.checkpoint import BEST_KEY, TOKENS_KEY, LoadedModel, load_model, read_checkpoint
from charlm.inference.internals import count_cpu_attention_flops
from charlm.inference.torch_runner import TorchRunner
from charlm.models import count_parameters
from charlm.training.callbacks import FinalValidation, GracefulInterrupt, StopNow, TextSampleCallback, ValidationLog
from charlm.training.console import is_rank_zero, say
from charlm.training.data import CharDataModule
from charlm.training.devices import check_devices, compile_model, training_device, use_fast_kernels
from charlm.training.lightning_module import LanguageModel
from charlm.training.memory import check_fits
from charlm.training.muon import native_bfloat16, newton_schulz_dtype
from charlm.training.report import write_report
from charlm.training.resume import best_score, early_stop_patience, fine_tune_source, resume_checkpoint, time_trained
from charlm.training.trackers import build_loggers, check_trackers, log_results, remember_runs, tracker_commands
from charlm.training.trainer import build_trainer


@dataclass(frozen=True)
class Plan:
    """What a run will do, decided before anything is built or written: every value checked, where it
    starts from (fresh, resumed or fine-tuned), its run folder, model, optimizer and vocabulary."""

    knobs: RunKnobs
    model: dict  # the model config it trains (fine-tuning: the checkpoint's)
    optimizer: dict  # the optimizer settings that apply, Muon's dtype resolved for the device
    run_dir: Path
    vocab: Vocabulary
    device: str
    ckpt_file: Path | None = None  # resuming: the checkpoint it continues
    start_step: int = 0
    best_so_far: float | None = None  # resuming: the checkpoint's best val/loss
    init: LoadedModel | None = None  # fine-tuning: the checkpoint it starts from
    time_trained: float | None = None  # resuming: the seconds max_time's clock had counted
    stopped_early: int | None = None  # resuming a run early stopping ended (still on): the patience it ran out of

    @property
    def finished(self) -> str | None:
        """Why a resumed run has nothing left to train (its max_steps or max_time spent, or early stopping
        ended it), else None."""
        knobs = self.knobs
        if self.ckpt_file is None:
            return None
        if self.start_step >= knobs.max_steps:
            return (f"is already at step {self.start_step}, and max_steps is {knobs.max_steps}: nothing to train, "
                    "nothing changed. Give a larger max_steps to train on.")
        if knobs.max_time and (self.time_trained or 0) >= clock_seconds(knobs.max_time):
            return (f"has trained for {self.time_trained:.0f} s, and max_time is {knobs.max_time}: nothing to train, "
                    "nothing changed. Give a larger max_time (or max_time=null) to train on.")
        if self.stopped_early is not None:
            return (f"was stopped early at step {self.start_step} (val/loss had not improved for {self.stopped_early} "
                    "validations): nothing to train, nothing changed. Give ~callbacks.early_stopping to train on.")
        return None

    @property
    def resumes_in_place(self) -> bool:
        """It continues a run in that run's own folder (a run folder or its checkpoint, or a SLURM requeue)."""
        return self.ckpt_file is not None and self.run_dir.resolve() in self.ckpt_file.resolve().parents


def make_plan(cfg: DictConfig) -> tuple[Plan, CharDataModule]:
    """The run's plan, and its data read and checked (the vocabulary comes from the text). It finishes
    the composed config (copies handed to their owners); nothing changes `cfg` after it."""
    settings = prepare_run_config(cfg, job_overrides(), in_sweep())  # every value checked before anything is read
    check_devices(cfg)
    check_trackers(cfg)
    knobs, model_config, data, init = settings.knobs, settings.model, settings.data, None
    if knobs.init_from is not None:
        init, model_config = fine_tune_source(knobs, data.vocab)
        knobs, data = replace(knobs, block_size=init.model.block_size), replace(data, block_size=init.model.block_size)
    model_settings(model_config)  # a bad model option fails here, before the data is read
    datamodule = CharDataModule(data, fixed_vocab=init.vocab.chars if init else None)
    datamodule.setup("fit")  # read and check the text now, so bad data fails before anything else
    vocab, device = datamodule.vocab, training_device(cfg)
    check_fits(model_config, len(vocab), knobs.batch_size, knobs.block_size, device, cpu_processes(cfg))
    run_dir, ckpt_path = Path(cfg.paths.run_dir), knobs.ckpt_path
    if ckpt_path is None and (requeued := requeue_checkpoint(run_dir)):
        ckpt_path = str(requeued)  # a SLURM job requeued into its own run folder
    ckpt_file, resumed = resume_checkpoint(ckpt_path, Path(cfg.paths.root) / "runs", model_config, vocab,
                                           settings.optimizer.name)
    if ckpt_file and run_folder_of(ckpt_file):
        run_dir = run_folder_of(ckpt_file).resolve()  # carry on in the interrupted run's folder
        with open_dict(cfg):
            cfg.paths.run_dir = str(run_dir)  # where the trainer, logger and checkpoints write
    optimizer = settings.optimizer.applied()
    if optimizer["name"] == "muon":
        optimizer["muon_dtype"] = str(newton_schulz_dtype(optimizer["muon_dtype"], device)).removeprefix("torch.")
    return Plan(knobs, model_config, optimizer, run_dir, vocab, device, ckpt_file, int(resumed.get("global_step", 0)),
                best_score(resumed), init, time_trained(resumed),
                early_stop_patience(resumed) if "early_stopping" in cfg.callbacks else None), datamodule


def build(plan: Plan, cfg: DictConfig) -> tuple[LanguageModel, list]:
    """The LightningModule (weights fresh or fine-tuned, compiled if asked) and the callbacks."""
    module = LanguageModel(model=plan.model, vocab=plan.vocab.chars, vocab_mode=plan.vocab.mode,
                           optimizer=plan.optimizer)
    if plan.init is not None:
        module.model.load_state_dict(plan.init.model.state_dict())
    if plan.knobs.compile:
        example = torch.zeros(plan.knobs.batch_size, plan.knobs.block_size, dtype=torch.long, device=plan.device)
        if compile_model(module.model, example, cfg.trainer.precision):
            say("compiled the model with torch.compile")
    else:  # the model summary's FLOPs and sizes: one block through the model (compiled, it would compile again)
        count_cpu_attention_flops()
        module.example_input_array = torch.zeros(1, plan.knobs.block_size, dtype=torch.long)
    # Not config options: every run ends validated and checkpointed, and logs each validation.
    return module, [instantiate(c) for c in cfg.callbacks.values()] + [FinalValidation(), ValidationLog()]


def announce(plan: Plan, cfg: DictConfig, module: LanguageModel, datamodule: CharDataModule) -> None:
    """What is about to run: resume point, model, data, optimizer, receptive field."""
    if plan.ckpt_file:
        say(f"resuming {plan.ckpt_file} at step {plan.start_step}; checkpoints and TensorBoard go to {plan.run_dir}")
    n_params, vocab = count_parameters(module.model), plan.vocab
    say(f"run {plan.knobs.name}: {plan.model['name']}, {n_params:,} parameters ({n_params * 4 / 1e6:.2f} MB as "
        f"float32), vocabulary {vocab.describe()}, {len(datamodule.train_ids):,} train / {len(datamodule.val_ids):,} "
        f"val / {len(datamodule.splits['test']):,} test tokens, output in {plan.run_dir}")
    optimizer = plan.optimizer
    if optimizer["name"] == "muon":
        why = ""
        if cfg.optimizer.muon_dtype == "auto":
            why = (f" (muon_dtype=auto: the {plan.device} {'has' if native_bfloat16(plan.device) else 'lacks'} "
                   "native bfloat16)")
        say(f"optimizer: Muon at muon_lr {optimizer['muon_lr']:g} for the blocks' matrices, Newton-Schulz in "
            f"{optimizer['muon_dtype']}{why}; AdamW at lr {optimizer['lr']:g} for embeddings, head, norms and biases")
    receptive_field = getattr(module.model, "receptive_field", None)
    if receptive_field is not None:
        block_size = plan.knobs.block_size
        say(f"receptive field: {receptive_field} characters (block_size {block_size})")
        if receptive_field < block_size:
            say(f"warning: the receptive field ({receptive_field}) is shorter than block_size ({block_size}): "
                "later positions cannot use the whole block; add layers or a longer dilation cycle", sys.stderr)


def train(cfg: DictConfig) -> float:
    """Train as configured, in four steps: plan, build, fit, report. Returns the best validation loss
    (what a sweeper minimises)."""
    plan, datamodule = make_plan(cfg)
    if reason := plan.finished:
        say(f"{plan.ckpt_file} {reason}", sys.stderr)
        return plan.best_so_far if plan.best_so_far is not None else math.inf
    use_fast_kernels(plan.knobs.threads)
    L.seed_everything(plan.knobs.seed, workers=True, verbose=False)
    module, callbacks = build(plan, cfg)
    announce(plan, cfg, module, datamodule)
    run_dir, interrupt = plan.run_dir, next((c for c in callbacks if isinstance(c, GracefulInterrupt)), None)
    zero = is_rank_zero()  # nothing is written into the run folder before rank zero holds it (one lock per run)
    with hold_run_folder(run_dir, plan.resumes_in_place, cfg) if zero else contextlib.nullcontext():
        loggers = build_loggers(cfg)
        if zero:
            ensure_writable(run_dir / "checkpoints")
            remember_runs(run_dir, loggers)  # so a resume continues the same MLflow and W&B runs
        trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers)
        module.started_at = time.perf_counter()
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(plan.ckpt_file) if plan.ckpt_file else None)
        except StopNow as stop:
            raise Interrupted(f"{signal.Signals(stop.signum).name} again: stopped at once; {run_dir / 'checkpoints'} "
                              f"holds the last saved step; resume with {resume_command(run_dir)}",
                              128 + stop.signum) from None
        except Exception as err:
            if trainer.progress_bar_callback is not None and trainer.progress_bar_callback.is_enabled:
                print(flush=True)  # the error's line goes below the progress bar, not onto it
            if (refused := system_error(err)) and saved_checkpoint(run_dir / "checkpoints"):  # a full disk
                raise CharLMError(f"{one_line(user_error(refused))}; {run_dir / 'checkpoints'} holds the last saved "
                                  f"step: resume with {resume_command(run_dir)} once it can be written") from err
            raise
        seconds = time.perf_counter() - module.started_at
        if not trainer.is_global_zero:
            return math.inf
        interrupted = interrupt is not None and interrupt.saved_at is not None
        best = report_run(plan, cfg, trainer, module, seconds, interrupted)
    if interrupted:
        if in_sweep():
            write_report(HydraConfig.get().sweep.dir)  # the sweep ends here: report the jobs that ran
        raise Interrupted(f"{signal.Signals(interrupt.signum).name}: saved {run_dir / 'checkpoints' / 'last.ckpt'} "
                          f"at step {interrupt.saved_at}; resume with {resume_command(run_dir)}",
                          128 + interrupt.signum)
    return best


def cpu_processes(cfg: DictConfig) -> int:
    """Training processes sharing this machine's RAM: DDP on the CPU runs one per device."""
    devices = cfg.trainer.devices
    return devices if training_device(cfg) == "cpu" and isinstance(devices, int) else 1


def final_state(trainer: L.Trainer, module: LanguageModel, run_dir: Path) -> tuple[int, dict | None, int | None]:
    """(global step, best validation {"loss", "step"}, tokens trained on if counted) as last.ckpt holds them.
    Read from disk because with ddp_spawn the training ran in child processes and this process's trainer
    and module never advanced."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return trainer.global_step, module.best_val, None
    checkpoint = read_checkpoint(last)
    return int(checkpoint["global_step"]), checkpoint.get(BEST_KEY), checkpoint.get(TOKENS_KEY)


def run_settings(plan: Plan, cfg: DictConfig) -> dict:
    """A run's settings as flat plain values, for comparing runs by them (TensorBoard's HParams): only
    those that apply to its model and optimizer."""
    settings = {"model": plan.model["name"], **{f"model.{k}": v for k, v in plan.model.items() if k != "name"}}
    for key in ("lr", "batch_size", "block_size", "max_steps", "seed"):
        settings[key] = getattr(plan.knobs, key)
    settings |= {f"optimizer.{k}": v for k, v in plan.optimizer.items()}
    settings |= {"data.path": cfg.data.path, "data.vocab": cfg.data.vocab, "precision": str(cfg.trainer.precision)}
    for key, value in as_dict(job_overrides()).items():  # what else was typed: experiment=, data.*, ...
        if not key.startswith(NOT_SETTINGS) and setting_key(key, settings) not in settings:
            settings[key] = "removed" if value is None else value  # ~key
    plain = (bool, int, float, str)
    return {k: v if isinstance(v, plain) else str(v) for k, v in settings.items()}


def report_run(plan: Plan, cfg: DictConfig, trainer: L.Trainer, module: LanguageModel, seconds: float,
               interrupted: bool) -> float:
    """Write summary.json, the HParams entry, and print the end-of-run summary with a sample from the best
    checkpoint (else the last)."""
    run_dir, knobs, n_params = plan.run_dir, plan.knobs, count_parameters(module.model)
    step, best, total_tokens = final_state(trainer, module, run_dir)
    best_loss = best["loss"] if best else math.nan
    best_path = str(best_checkpoint(run_dir / "checkpoints") or "")
    tokens_per_step = trainer.accumulate_grad_batches * knobs.batch_size * knobs.block_size * trainer.world_size
    tokens = (step - plan.start_step) * tokens_per_step  # this call's; total_tokens spans resumes at other batch sizes
    status = "interrupted" if interrupted else "finished" if step >= knobs.max_steps else "stopped early"
    summary = {
        "name": knobs.name, "model": plan.model["name"], "seed": knobs.seed, "parameters": n_params, "steps": step,
        "tokens": step * tokens_per_step if total_tokens is None else int(total_tokens),
        "best_val_loss": best_loss, "best_val_bpc": best_loss / math.log(2), "best_step": best and best["step"],
        "tokens_per_s": tokens / seconds, "wall_time_s": (module.earlier_seconds or 0.0) + seconds,
        "best_checkpoint": best_path, "status": status,
        "optimizer": plan.optimizer["name"], "muon_dtype": plan.optimizer.get("muon_dtype"),
    }
    results = {"best_val_loss": best_loss, "best_val_bpc": summary["best_val_bpc"], "parameters": n_params,
               "tokens_per_s": summary["tokens_per_s"]}
    settings = run_settings(plan, cfg)
    summary = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in summary.items()}  # JSON
    summary["settings"] = settings
    atomic_write(run_dir / "summary.json", lambda file: file.write((json.dumps(summary, indent=2) + "\n").encode()))
    log_results(trainer.loggers, settings, results, step)  # TensorBoard's HParams tab: every run side by side
    sample, sample_from = "", saved_checkpoint(run_dir / "checkpoints")  # none after a fast_dev_run
    if sample_from:
        sampler = next((c for c in trainer.callbacks if isinstance(c, TextSampleCallback)), TextSampleCallback())
        saved_model = load_model(sample_from)
        with TorchRunner(saved_model.model) as runner:
            sample = sample_text(runner, saved_model.vocab, sampler.prompt_for(saved_model.vocab),
                                 max(sampler.num_tokens, 200), temperature=sampler.temperature,
                                 rng=np.random.default_rng(sampler.seed))
    metrics = trainer.callback_metrics  # train/loss only from log_every_n_steps on: a shorter run has none
    losses = [f"{key} {float(metrics[key]):.4f}" for key in ("train/loss", "val/loss") if key in metrics]
    losses.append(f"best val/loss {best_loss:.4f}" + (f" at step {best['step']}" if best else ""))
    steps = step - plan.start_step
    saved = ["sample:", visible(sample), "", *next_commands(run_dir, cfg)] if sample_from else []
    say("\n".join([
        f"trained {steps} step{'s' if steps != 1 else ''}, {tokens:,} tokens in {seconds:.1f} s: "
        f"{tokens / seconds:,.0f} tokens/s (validation included)"
        + (f"; {summary['wall_time_s']:.1f} s in all, with the calls it resumed" if module.earlier_seconds else ""),
        "final " + ", ".join(losses),
        f"best checkpoint: {best_path or '-'}",
        *saved, *tracker_commands(cfg),
    ]))
    return best_loss if not math.isnan(best_loss) else math.inf


def resume_command(run_dir: Path) -> str:
    """The command that resumes this run, ready to paste (its folder holds the arguments it was started with)."""
    return f"{command_for('train')} {shlex.quote(f'ckpt_path={run_dir}')}"


def next_commands(run_dir: Path, cfg: DictConfig) -> list[str]:
    """What to do with a finished run, ready to paste as this run was started (`python sample.py` or
    `charlm sample`): sample, score, and look in TensorBoard where the run logged there (a sweep: all its runs)."""
    logdir = shlex.quote(str(Path(HydraConfig.get().sweep.dir).resolve() if in_sweep() else run_dir))
    ckpt = shlex.quote(f"ckpt={run_dir}")
    look = [f"  tensorboard --logdir {logdir}"] if "tensorboard" in (cfg.logger or {}) else []
    return ["next:", f"  {command_for('sample')} {ckpt}", f"  {command_for('evaluate')} {ckpt}", *look]

