"""A training run from a composed Hydra config: data, model, trainer, fit, report."""

import contextlib
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from charlm.atomic import atomic_write
from charlm.callbacks import GracefulInterrupt, TextSampleCallback
from charlm.checkpoint import find_checkpoint, load_model, newest_run, read_checkpoint
from charlm.errors import CharLMError, describe_error
from charlm.lit import LanguageModel
from charlm.models import count_parameters, full_config
from charlm.models.runner import TorchRunner
from charlm.sampling import sample_text

# Lightning chatter that says nothing about this run.
NOISE = ("💡 Tip", "Trainer already configured with model summary")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not record.getMessage().startswith(NOISE)
)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# num_workers=0 is deliberate (conf/data): a batch is one indexing op, and workers only add overhead.
warnings.filterwarnings("ignore", message=r".*does not have many workers")
# Our sampler does resume mid-epoch: it starts at the restored step (CharDataModule.batches_done).
warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temp file beside the target, fsync, then rename: a crash never leaves half a file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), lambda file: torch.save(checkpoint, file))


class NoProfiler(PassThroughProfiler):
    """Times nothing, like Lightning's default profiler, but cheaper. Lightning wraps each of its ~50
    hook calls a step in profiler.profile(name), and the default builds a generator context manager
    every time; one shared no-op context saves about 0.1 ms a step on CPU (3.41 -> 3.31 ms for a
    1-layer 16-wide GPT, where overhead dominates), about 1% of the 0.2M model's step."""

    _nothing = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return self._nothing


def build_trainer(cfg: DictConfig, **overrides) -> L.Trainer:
    """The configured Trainer; `trainer.profiler=simple` (or advanced) times Lightning's hooks."""
    return instantiate(cfg.trainer, profiler=cfg.trainer.get("profiler") or NoProfiler(), **overrides)


def use_fast_kernels(cfg: DictConfig) -> None:
    """Intra-op threads as configured; TF32 matmuls and convolutions on GPUs that have them."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def training_device(cfg: DictConfig) -> str:
    """Where the trainer will put the model: a GPU unless the CPU is asked for or there is none."""
    return "cpu" if cfg.trainer.accelerator == "cpu" or not torch.cuda.is_available() else "cuda"


def mixed_dtype(precision: str) -> torch.dtype | None:
    """The half-precision type a mixed `precision` setting multiplies in; None for full precision."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))


def autocast(precision: str, device: str):
    """The autocast context Lightning's `precision` setting trains under (none for full precision)."""
    dtype = mixed_dtype(precision)
    return torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext()


def compile_model(model: torch.nn.Module, example: torch.Tensor, precision: str = "32-true") -> bool:
    """Compile in place (state_dict keys stay unchanged), trying one forward and backward pass now
    on the example's device, batch shape and precision, so the kernels built are those training uses.

    Returns False, after a warning, when this machine cannot compile, and the model stays eager.
    """
    home = next(model.parameters()).device
    try:
        model.compile()
        with autocast(precision, example.device.type):
            loss = model.to(example.device)(example).float().sum()
        loss.backward()
        model.zero_grad(set_to_none=True)
        model.to(home)
        return True
    except Exception as err:  # compilers fail in many ways: no C++ toolchain, unsupported platform...
        model._compiled_call_impl = None  # back to eager
        model.to(home)
        torch._dynamo.reset()
        say(f"warning: compile=true failed, training without torch.compile ({describe_error(err)})", sys.stderr)
        return False


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


def resume_file(ckpt_path: str) -> Path:
    """`last` (the newest run's last.ckpt), a run folder (its last.ckpt) or a checkpoint file."""
    path = newest_run("checkpoints/last.ckpt") if ckpt_path == "last" else Path(ckpt_path).expanduser()
    last = path / "checkpoints" / "last.ckpt"
    return last if last.is_file() else find_checkpoint(path)


def run_folder_of(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint belongs to (<run>/checkpoints/x.ckpt), if it is laid out so."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def resume_checkpoint(ckpt_path: str | None, module: LanguageModel) -> tuple[str | None, int]:
    """Resolve `ckpt_path` and check the checkpoint fits this model and vocabulary.

    Returns the checkpoint file (None for a fresh run) and the step it was saved at.
    """
    if ckpt_path is None:
        return None, 0
    file = resume_file(ckpt_path)
    checkpoint = read_checkpoint(file)
    saved = checkpoint["hyper_parameters"]
    if saved["vocab"] != module.hparams.vocab:
        raise CharLMError(f"cannot resume from {file}: it was trained on a different vocabulary (other data)")
    there, here = full_config(saved["model"]), full_config(module.hparams.model)
    if there != here:
        changed = sorted(k for k in there.keys() | here.keys() if there.get(k) != here.get(k))
        diffs = ", ".join(f"{k}: {there.get(k)!r} there, {here.get(k)!r} here" for k in changed)
        raise CharLMError(f"cannot resume from {file}: its model differs ({diffs})")
    return str(file), int(checkpoint.get("global_step", 0))


def fine_tune_source(cfg: DictConfig):
    """The checkpoint to fine-tune from, and the model config to train: the checkpoint's, with the
    current dropout. Its vocabulary is kept, so text with other characters is rejected."""
    if cfg.ckpt_path is not None:
        raise CharLMError("give init_from (start a new run from trained weights) or ckpt_path (resume a run), not both")
    init = load_model(cfg.init_from)
    if init.quantization is not None:
        raise CharLMError(f"cannot fine-tune a quantized checkpoint: {init.path}; use the float checkpoint")
    config = dict(init.model_config)
    if "dropout" in config:
        config["dropout"] = cfg.dropout
    say(f"fine-tuning {init.path}: its model ({config['name']}) and vocabulary ({len(init.vocab)} characters); "
        "size knobs on the command line are ignored")
    return init, config


def train(cfg: DictConfig) -> float:
    """Train as configured; returns the best validation loss (what a sweeper minimises)."""
    check_run_config(cfg)
    use_fast_kernels(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = Path(cfg.paths.run_dir)

    model_config, init = OmegaConf.to_container(cfg.model, resolve=True), None
    if cfg.init_from is not None:
        init, model_config = fine_tune_source(cfg)
        datamodule = instantiate(cfg.data, vocab=init.vocab.chars, block_size=init.model.block_size)
    else:
        datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # read and check the text now, so bad data fails before anything else
    module = LanguageModel(model=model_config, vocab=datamodule.vocab.chars,
                           optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True))
    if init is not None:
        module.model.load_state_dict(init.model.state_dict())
    ckpt_path, start_step = resume_checkpoint(cfg.ckpt_path, module)
    if ckpt_path and run_folder_of(Path(ckpt_path)):
        run_dir = run_folder_of(Path(ckpt_path)).resolve()  # carry on in the interrupted run's folder
        with open_dict(cfg):
            cfg.paths.run_dir = str(run_dir)
        say(f"resuming {ckpt_path} at step {start_step}; checkpoints and TensorBoard stay in {run_dir}")
    if cfg.compile:
        example = torch.zeros(cfg.batch_size, cfg.block_size, dtype=torch.long, device=training_device(cfg))
        if compile_model(module.model, example, cfg.trainer.precision):
            say("compiled the model with torch.compile")
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
    trainer = build_trainer(cfg, callbacks=callbacks, logger=instantiate(cfg.logger), plugins=[AtomicCheckpointIO()])
    start_time = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - start_time
    if not trainer.is_global_zero:
        return math.inf
    best = report_run(cfg, trainer, run_dir, n_params, start_step, seconds)
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


def report_run(cfg: DictConfig, trainer: L.Trainer, run_dir: Path, n_params: int, start_step: int,
               seconds: float) -> float:
    """Write summary.json and print the end-of-run summary with a sample from the best checkpoint."""
    step, best_loss, best_path = final_state(trainer, run_dir)
    tokens_per_step = trainer.accumulate_grad_batches * cfg.batch_size * cfg.block_size * trainer.world_size
    tokens = (step - start_step) * tokens_per_step
    summary = {
        "name": cfg.name, "model": cfg.model.name, "seed": cfg.seed, "parameters": n_params, "steps": step,
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
