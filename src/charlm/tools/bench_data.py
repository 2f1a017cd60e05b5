"""The data benchmark (`python -m charlm bench data`): a large UTF-8 corpus through the token store,
against nanoGPT-style encoding, and what it costs a training run. Every measurement runs in a fresh
process, so its peak memory (ru_maxrss) is its own."""

import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from charlm.core.corpus import load_corpus, resolve_path
from charlm.core.run_config import DataConfig, OptimizerConfig
from charlm.models import build_model
from charlm.training.data import CharDataModule
from charlm.training.recipe import make_optimizer, next_token_loss

# Mixed in so the corpus is real UTF-8, not ASCII: the general (code point) path is the one timed.
NON_ASCII_LINE = "Ça va, Grüße, 你好, привет 🌹\n".encode()


def make_corpus(path: Path, megabytes: int) -> int:
    """Tiny Shakespeare repeated to `megabytes` MB, a non-ASCII line after each copy."""
    chunk = resolve_path(None).read_bytes() + NON_ASCII_LINE
    target = megabytes * 1_000_000
    with open(path, "wb") as handle:
        written = 0
        while written < target:
            piece = chunk[: target - written]
            handle.write(piece.decode("utf-8", errors="ignore").encode())  # never cut a character
            written += len(piece)
    return path.stat().st_size


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def store_load(path: str, cache_dir: str) -> tuple[float, float, int]:
    start = time.perf_counter()
    corpus = load_corpus(path, "chars", cache_dir)
    tokens = len(corpus.tokens)
    return time.perf_counter() - start, peak_mb(), tokens


def nanogpt_encode(path: str) -> tuple[float, float, int]:
    """nanoGPT's data/shakespeare_char/prepare.py: the whole text, a dict, a list comprehension, an array."""
    start = time.perf_counter()
    with open(path, encoding="utf-8") as handle:
        data = handle.read()
    chars = sorted(set(data))
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([stoi[c] for c in data], dtype=np.uint16)
    return time.perf_counter() - start, peak_mb(), len(ids)


def in_worker(function, *args):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def train_run(data_path: str, cache_dir: str, run_dir: str) -> tuple[float, float]:
    """(seconds from launch to the end of the first training step, peak MB) of `python train.py`."""
    stamp = Path(run_dir) / "first_step"
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    env = {**os.environ, "XDG_CACHE_HOME": cache_dir, "CHARLM_FIRST_STEP_FILE": str(stamp)}
    start = time.time()
    result = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "charlm.commands", "train",
                             f"data.path={data_path}",
                             "max_steps=2", "eval_interval=2", "callbacks.progress_bar.refresh_rate=0",
                             "+callbacks.first_step._target_=charlm.tools.bench_data.FirstStepStamp",
                             f"hydra.run.dir={run_dir}"], env=env, capture_output=True, text=True, check=True)
    return float(stamp.read_text()) - start, int(result.stdout.split()[-1]) / 1024


def step_times(steps: int, rounds: int) -> tuple[float, float]:
    """Median bare training step (0.2M GPT, Tiny Shakespeare) with tokens memory-mapped and in memory,
    in alternating rounds."""
    datamodule = CharDataModule(DataConfig(block_size=32, batch_size=16, num_batches=steps))
    datamodule.setup()
    mapped = datamodule.splits["train"]
    times = {"memory-mapped": [], "in memory": []}
    for _ in range(rounds):
        for name, tokens in (("memory-mapped", mapped), ("in memory", np.array(mapped))):
            datamodule.splits["train"] = tokens
            torch.manual_seed(0)
            model = build_model({"name": "gpt", "n_layer": 2, "n_head": 5, "n_embd": 90, "block_size": 32,
                                 "pos_encoding": "rope"}, len(datamodule.vocab))
            optimizer, scheduler = make_optimizer(model, OptimizerConfig(warmup_steps=10), steps)
            last = time.perf_counter()
            for step, batch in enumerate(datamodule.train_dataloader()):
                loss = next_token_loss(model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                now = time.perf_counter()
                if step >= steps // 10:  # after warm-up
                    times[name].append(now - last)
                last = now
    return statistics.median(times["memory-mapped"]), statistics.median(times["in memory"])


class FirstStepStamp(L.Callback):
    """For the benchmark's train.py runs: writes the wall-clock time at the end of the first training
    step to $CHARLM_FIRST_STEP_FILE."""

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == 1:
            Path(os.environ["CHARLM_FIRST_STEP_FILE"]).write_text(repr(time.time()))


def bench_data(megabytes: int, steps: int, rounds: int, baseline: bool, print_row) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus, cache = Path(tmp) / f"corpus_{megabytes}mb.txt", Path(tmp) / "cache" / "charlm" / "tokens"
        size = make_corpus(corpus, megabytes)
        shakespeare_cache = Path(tmp) / "cache-ts"
        for what, function, args in [
            ("token store, first run (encode + write)", store_load, (str(corpus), str(cache))),
            ("token store, cached run (memory-map)", store_load, (str(corpus), str(cache))),
            *([("nanoGPT-style encoding (list comprehension)", nanogpt_encode, (str(corpus),))] if baseline else []),
        ]:
            seconds, peak, tokens = in_worker(function, *args)
            rows.append({"measurement": what, "corpus_mb": size / 1e6, "tokens": tokens, "ms": seconds * 1e3,
                         "peak_rss_mb": peak})
            print_row(rows[-1])
        for name, path in [("Tiny Shakespeare", "tinyshakespeare"), (f"{megabytes} MB corpus (cached)", str(corpus))]:
            cache_home = str(Path(tmp) / "cache") if path != "tinyshakespeare" else str(shakespeare_cache)
            in_worker(store_load, path, str(Path(cache_home) / "charlm" / "tokens"))  # cached beforehand
            seconds, peak = train_run(path, cache_home, str(Path(tmp) / f"run-{len(rows)}"))
            rows.append({"measurement": f"train.py to its first step, {name}", "corpus_mb": (
                resolve_path(None).stat().st_size if path == "tinyshakespeare" else size) / 1e6, "tokens": "-",
                "ms": seconds * 1e3, "peak_rss_mb": peak})
            print_row(rows[-1])
    mapped, memory = in_worker(step_times, steps, rounds)
    for name, seconds in [("training step (median), tokens memory-mapped", mapped),
                          ("training step (median), tokens in memory", memory)]:
        rows.append({"measurement": name, "corpus_mb": resolve_path(None).stat().st_size / 1e6, "tokens": "-",
                     "ms": seconds * 1e3, "peak_rss_mb": "-"})
        print_row(rows[-1])
    return rows

