"""The benchmarks behind `python -m charlm bench` (tools/bench.py parses its arguments): the
training and generation ones here, the others in bench_*.py, and the table each prints and saves.

Models come from the experiment presets (a case may add overrides: "gpt_2.7m block_size=128
batch_size=32"), trained on Tiny Shakespeare or, for generation, with random weights (speed does not
depend on them). Every figure is a median over many steps after warm-up.
"""

import dataclasses
import json
import multiprocessing
import os
import platform
import resource
import signal
import statistics
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from charlm.core.cli import one_line, prepare_hydra
from charlm.core.errors import CharLMError
from charlm.core.generation import generate
from charlm.core.run_config import DataConfig, OptimizerConfig, group_settings, prepare_run_config
from charlm.inference.checkpoint import numpy_weights
from charlm.inference.numpy_gpt import NumpyGPT
from charlm.inference.torch_runner import TorchRunner
from charlm.models import GPT, build_model, count_parameters
from charlm.tools.bench_data import bench_data
from charlm.tools.bench_optimizer import optimizer_case
from charlm.tools.bench_pictures import pictures_case
from charlm.tools.bench_sample import sample_case
from charlm.tools.bench_speedrun import NANOGPT_ARGS, THRESHOLDS, bench_speedrun
from charlm.training.data import CharDataModule
from charlm.training.devices import autocast, compile_model, mixed_dtype, training_device, use_fast_kernels
from charlm.training.lightning_module import LanguageModel
from charlm.training.recipe import make_optimizer, next_token_loss
from charlm.training.trainer import build_trainer

TRAINING_CASES = [
    "gpt_0.2m",
    "cnn_0.2m",
    "gpt_2.7m block_size=128 batch_size=32",
    "cnn_2.7m block_size=128 batch_size=32",
]
OPTIMIZER_CASES = ["gpt_0.2m", "cnn_0.2m", "gpt_2.7m", "cnn_2.7m"]
SPEEDRUN_CASES = ["speedrun"]
SAMPLE_CASES = ["gpt_10.7m"]

VOCAB_SIZE = 65
CONF = Path(str(resources.files("charlm") / "conf"))  # the installed package's config, as train.py reads it


def preset_config(name: str, *overrides: str):
    """Compose the training config of an experiment preset, as `train.py experiment=NAME` would."""
    prepare_hydra()
    if not (CONF / "experiment" / f"{name}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
        raise CharLMError(f"unknown preset {name!r}; presets: {known}")
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"experiment={name}", *overrides])
    except HydraException as err:  # a key that does not exist, a malformed override
        raise CharLMError(f"bad override in {' '.join([name, *overrides])!r}: {one_line(err)}") from None
    prepare_run_config(cfg, overrides)  # as train.py does: copies handed to their owners, values checked
    return cfg


def case_config(case: str, *extra: str):
    if not case.split():
        raise CharLMError("--case needs a preset name, e.g. --case gpt_0.2m or --case 'gpt_2.7m batch_size=32'")
    name, *overrides = case.split()
    return preset_config(name, *overrides, *extra)


def preset_model(name: str) -> torch.nn.Module:
    cfg = preset_config(name)
    return build_model(OmegaConf.to_container(cfg.model, resolve=True), vocab_size=VOCAB_SIZE)


def matmul_peak_flops(dtype: torch.dtype = torch.float32, repeats: int = 10) -> float:
    """Peak matmul throughput (FLOP/s) of this device at the current thread count: the best
    median over square sizes 512 to 2048 (GPU: 1024 to 8192)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = (1024, 4096, 8192) if device == "cuda" else (512, 1024, 2048)
    best = 0.0
    for size in sizes:
        a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
        times = []
        for _ in range(repeats + 2):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            a @ b
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        best = max(best, 2 * size**3 / statistics.median(times[2:]))
    return best


def flops_per_token(model: torch.nn.Module, block_size: int) -> float:
    """Training FLOPs per token, forward and backward, as nanoGPT and the PaLM paper count them:
    6 per weight of every matrix product (embedding lookups excluded, a tied head included) plus
    12 * n_layer * n_embd * block_size for attention scores and their weighted sums."""
    matmul_weights = sum(p.numel() for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n)
    if getattr(model.config, "tie_weights", False):
        matmul_weights += model.head.weight.numel()
    flops = 6 * matmul_weights
    if hasattr(model.config, "n_head"):  # attention
        flops += 12 * model.config.n_layer * model.config.n_embd * block_size
    return flops


class StepTimer:
    """Times every training step as the interval between consecutive batch ends: data loading,
    forward, backward, optimizer, logging and progress bar all included."""

    def __init__(self):
        class _Callback(L.Callback):
            def on_train_batch_end(inner, *args, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()  # GPU work is asynchronous: time finished steps, as the bare loop does
                self.stamps.append(time.perf_counter())

        self.stamps: list[float] = []
        self.callback = _Callback()

    def intervals(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]


def maybe_compile(cfg, model: torch.nn.Module) -> None:
    """compile=true in a case ("gpt_2.7m compile=true") compiles the model as a training run does."""
    if cfg.compile:
        example = torch.zeros(cfg.batch_size, cfg.block_size, dtype=torch.long, device=training_device(cfg))
        compile_model(model, example, cfg.trainer.precision)


def lightning_steps(cfg, steps: int) -> list[float]:
    """Step times of the real Lightning loop: the run's own trainer, logger and callbacks
    (progress bar, LR monitor, model summary), without validation and checkpoints."""
    datamodule = CharDataModule(group_settings(DataConfig, cfg.data))
    datamodule.setup("fit")
    module = LanguageModel(OmegaConf.to_container(cfg.model, resolve=True), datamodule.vocab.chars,
                           group_settings(OptimizerConfig, cfg.optimizer).applied())
    maybe_compile(cfg, module.model)
    timer = StepTimer()
    skip = {"checkpoint", "last_checkpoint", "text_sample", "early_stopping"}  # no validation in these timings
    callbacks = [instantiate(c) for k, c in cfg.callbacks.items() if k not in skip] + [timer.callback]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, callbacks=callbacks, max_steps=steps, limit_val_batches=0,
                                num_sanity_val_steps=0, enable_checkpointing=False, default_root_dir=tmp,
                                logger=[instantiate(node, save_dir=tmp) for node in cfg.logger.values()])
        trainer.fit(module, datamodule=datamodule)
    return timer.intervals()


def bare_steps(cfg, steps: int) -> list[float]:
    """Step times of a plain PyTorch loop doing the same work: same data loader, model, AdamW,
    schedule, gradient clipping and mixed precision; no Lightning."""
    datamodule = CharDataModule(group_settings(DataConfig, cfg.data))
    datamodule.setup("fit")
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), vocab_size=len(datamodule.vocab))
    device = training_device(cfg)
    model.to(device).train()
    maybe_compile(cfg, model)
    optimizer, scheduler = make_optimizer(model, group_settings(OptimizerConfig, cfg.optimizer), cfg.max_steps,
                                          fused=device == "cuda")
    clip = cfg.trainer.gradient_clip_val
    scaler = torch.amp.GradScaler(device, enabled=str(cfg.trainer.precision) == "16-mixed")  # as Lightning's 16-mixed
    times, start = [], time.perf_counter()
    for step, (inputs, targets) in enumerate(datamodule.train_dataloader()):
        if step == steps:
            break
        with autocast(cfg.trainer.precision, device):
            loss = next_token_loss(model, (inputs.to(device), targets.to(device)))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - start)
        start = now
    return times


def training_case(case: str, steps: int, threads: int | None, rounds: int) -> dict:
    """One benchmark case, run in a fresh process (see bench_training) so peak memory is its own."""
    if threads:
        torch.set_num_threads(threads)
    cfg = case_config(case, f"max_steps={steps}")
    use_fast_kernels(cfg.threads)
    # Mixed precision multiplies in half precision, so its peak is the half-precision one.
    peak_dtype = mixed_dtype(cfg.trainer.precision) or torch.float32
    warmup = max(3, steps // 10)
    bare, lightning, peaks = [], [], []
    for _ in range(rounds):  # alternate, so drifting machine load hits both loops alike
        bare += bare_steps(cfg, steps)[warmup:]
        lightning += lightning_steps(cfg, steps)[warmup:]
        # The peak once per round, keeping the highest: a peak timed in a noisy moment would
        # understate it and overstate MFU.
        peaks.append(matmul_peak_flops(peak_dtype))
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), vocab_size=VOCAB_SIZE)
    tokens = cfg.batch_size * cfg.block_size
    bare_s, lightning_s = statistics.median(bare), statistics.median(lightning)
    flops = flops_per_token(model, cfg.block_size) * tokens
    peak = max(peaks)
    if torch.cuda.is_available():
        memory_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return {
        "case": case, "parameters": count_parameters(model), "tokens_per_step": tokens,
        "bare_ms_per_step": bare_s * 1e3, "lightning_ms_per_step": lightning_s * 1e3,
        "lightning_over_bare": bare_s / lightning_s, "lightning_tokens_per_s": tokens / lightning_s,
        "model_gflop_per_step": flops / 1e9, "peak_gflop_per_s": peak / 1e9,
        "mfu_lightning": flops / lightning_s / peak, "precision": str(cfg.trainer.precision),
        "peak_memory_mb": memory_mb, "threads": torch.get_num_threads(),
    }


def bench_training(cases: list[str], steps: int, threads: int | None, rounds: int) -> list[dict]:
    rows = []
    spawn = multiprocessing.get_context("spawn")
    # Killed (SIGTERM), leave through the Pool's `with`, which terminates the worker: otherwise it is
    # orphaned and keeps both cores busy, skewing whatever is timed next.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        for case in cases:  # (each one checked in this process: run_benchmark)
            with spawn.Pool(1) as pool:
                rows.append(pool.apply(training_case, (case, steps, threads, rounds)))
                pool.close()  # the worker leaves on its own, releasing what it holds (`with` would kill it)
                pool.join()
            print_row(rows[-1])
    finally:
        signal.signal(signal.SIGTERM, previous)
    return rows


def time_generation(runner, batch: int, tokens: int, use_cache: bool, repeats: int) -> float:
    """Median tokens/s (per sequence, i.e. characters each sample gains per second)."""
    prompt = np.zeros((batch, 1), dtype=np.int64)
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in generate(runner, prompt, tokens, temperature=1.0, rng=rng, use_cache=use_cache):
            pass
        rates.append(tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_generation(presets: list[str], tokens: int, batches: list[int], repeats: int,
                     numpy_too: bool = False, compile_too: bool = False, device: str = "cpu") -> list[dict]:
    """Torch on `device`; with compile_too also torch with a compiled cached step (GPT presets); with
    numpy_too the NumPy engine on the same weights (GPT presets; always the CPU)."""
    rows = []
    for name in presets:
        model = preset_model(name).to(device).eval()
        runners = [("torch", TorchRunner(model))]
        if compile_too and hasattr(model, "step"):
            runners.append(("torch+compile", TorchRunner(model, compile=True)))
        if numpy_too and isinstance(model, GPT):  # a GPT preset, whatever its name (speedrun)
            config = {k: v for k, v in dataclasses.asdict(model.config).items() if k != "vocab_size"}
            runners.append(("numpy", NumpyGPT(config, numpy_weights(model))))
        eager_recompute = {}
        for backend, runner in runners:
            for batch in batches:
                compile_s = "-"
                if backend == "torch+compile":  # compile (or load from Inductor's cache) before timing
                    start = time.perf_counter()
                    time_generation(runner, batch, 1, use_cache=True, repeats=1)
                    compile_s = time.perf_counter() - start
                    full = eager_recompute[batch]  # its recompute path is the eager model's, timed above
                else:
                    full = time_generation(runner, batch, tokens, use_cache=False, repeats=repeats)
                    eager_recompute.setdefault(batch, full)
                cached = time_generation(runner, batch, tokens, use_cache=True, repeats=repeats)
                rows.append({
                    "preset": name, "backend": backend, "device": "cpu" if backend == "numpy" else device,
                    "parameters": count_parameters(model), "batch": batch,
                    "new_tokens": tokens, "recompute_tokens_per_s": full, "cached_tokens_per_s": cached,
                    "speedup": cached / full, "compile_s": compile_s,
                })
                print_row(rows[-1])
    return rows


def machine() -> str:
    """CPU (or GPU) model, core count, torch version and threads: enough to compare two tables."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        cpuinfo = Path("/proc/cpuinfo")
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")] if cpuinfo.is_file() else []
        device = f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return f"{device}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def format_value(value) -> str:
    """Three decimals for small floats (ratios, MFU), one for large ones, thousands separators."""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def print_row(row: dict) -> None:
    print("  ".join(f"{k}={format_value(v)}" for k, v in row.items()), flush=True)


def markdown_table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row[k]) for k in keys) + " |")
    return "\n".join(lines)


def save(rows: list[dict], kind: str, out_dir: Path, command: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    header = f"`{command}` on {machine()}\n\n"
    (out_dir / f"{kind}.md").write_text(header + table + "\n")
    (out_dir / f"{kind}.json").write_text(json.dumps({"command": command, "machine": machine(), "rows": rows},
                                                     indent=2) + "\n")
    print("\n" + header + table)
    print(f"\nsaved {out_dir / kind}.md and .json")


def run_benchmark(args, command: str) -> None:
    """Run the benchmark `args.kind` with bench.py's checked arguments, then print and save its table."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CharLMError("--device cuda: this machine has no CUDA GPU that torch can use")
    if args.threads:
        torch.set_num_threads(args.threads)
    for case in args.case or []:  # a bad case is refused at once, not after minutes of the others (or nanoGPT's)
        case_config(case)
    if args.kind == "training":
        rows = bench_training(args.case or TRAINING_CASES, args.steps, args.threads, args.rounds)
    elif args.kind == "speedrun":
        rows = bench_speedrun(args.case or SPEEDRUN_CASES, args.thresholds or THRESHOLDS, args.nanogpt,
                              args.nanogpt_args or NANOGPT_ARGS, args.out / "speedrun", print_row)
    elif args.kind == "optimizer":
        rows = []
        for case in args.case or OPTIMIZER_CASES:
            rows.append(optimizer_case(case_config(case), case, args.steps, args.rounds))
            print_row(rows[-1])
    elif args.kind == "pictures":
        rows = []
        for case in args.case or ["gpt_0.2m", "cnn_0.2m"]:
            cfg = case_config(case)
            use_fast_kernels(cfg.threads)
            step = statistics.median(bare_steps(cfg, args.steps)[args.steps // 10:])
            model = build_model(OmegaConf.to_container(cfg.model, resolve=True), vocab_size=VOCAB_SIZE)
            rows.append(pictures_case(cfg, case, model, step, args.steps))
            print_row(rows[-1])
    elif args.kind == "sample":
        rows = []
        for case in args.case or SAMPLE_CASES:
            rows.append(sample_case(case, args.tokens, args.rounds, args.nanogpt, args.out / "sample"))
            print_row(rows[-1])
    elif args.kind == "data":
        rows = bench_data(args.megabytes, args.steps, args.rounds, not args.no_baseline, print_row)
    else:
        rows = bench_generation([p for p in args.presets.split(",") if p], args.tokens, args.batch, args.repeats,
                                args.numpy, args.compile, device)
    save(rows, args.kind, args.out, command)
