"""The benchmark command runs and writes its tables. Speed itself is measured, never asserted, in tests."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


def test_generation_benchmark_writes_markdown_and_json(tmp_path):
    cmd = [sys.executable, "-m", "charlm.bench", "generation", "--presets", "gpt_0.2m,cnn_0.2m", "--numpy",
           "--compile", "--tokens", "40", "--batch", "1,2", "--repeats", "1", "--device", "cpu", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "generation.json").read_text())["rows"]
    assert [(r["preset"], r["backend"], r["batch"]) for r in rows] == [
        ("gpt_0.2m", "torch", 1), ("gpt_0.2m", "torch", 2), ("gpt_0.2m", "torch+compile", 1),
        ("gpt_0.2m", "torch+compile", 2), ("gpt_0.2m", "numpy", 1), ("gpt_0.2m", "numpy", 2),
        ("cnn_0.2m", "torch", 1), ("cnn_0.2m", "torch", 2)]  # the CNN has no compiled step
    assert all(r["speedup"] == pytest.approx(r["cached_tokens_per_s"] / r["recompute_tokens_per_s"]) for r in rows)
    assert all((r["compile_s"] > 0) if r["backend"] == "torch+compile" else r["compile_s"] == "-" for r in rows)
    assert "warning" not in result.stderr  # it compiled rather than falling back
    assert "| gpt_0.2m | torch | cpu | 207,681 | 1 | 40 |" in (tmp_path / "generation.md").read_text()


def test_unknown_preset_is_one_clear_error(tmp_path):
    cmd = [sys.executable, "-m", "charlm.bench", "generation", "--presets", "gpt_9m", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "unknown preset 'gpt_9m'; presets: cnn_0.2m" in result.stderr and "Traceback" not in result.stderr


def test_training_benchmark_times_both_loops(tmp_path):
    case = "gpt_0.2m n_layer=1 n_embd=16 n_head=2"
    cmd = [sys.executable, "-m", "charlm.bench", "training", "--steps", "20", "--rounds", "1", "--case", case,
           "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    [row] = json.loads((tmp_path / "training.json").read_text())["rows"]
    assert row["case"] == case and row["tokens_per_step"] == 16 * 32
    step_s = row["lightning_ms_per_step"] / 1e3
    assert row["lightning_over_bare"] == pytest.approx(row["bare_ms_per_step"] / row["lightning_ms_per_step"])
    assert row["lightning_tokens_per_s"] == pytest.approx(16 * 32 / step_s)
    assert row["mfu_lightning"] == pytest.approx(row["model_gflop_per_step"] / step_s / row["peak_gflop_per_s"])
    assert 0 < row["mfu_lightning"] < 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_a_gpu_without_one_is_one_clear_error(tmp_path):
    cmd = [sys.executable, "-m", "charlm.bench", "generation", "--device", "cuda", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "--device cuda: this machine has no CUDA GPU" in result.stderr and "Traceback" not in result.stderr


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit status may never be collected here)."""
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State"))
    except (OSError, StopIteration):
        return False
    return "zombie" not in state


def pool_workers(parent: int) -> list[int]:
    """multiprocessing workers started by `parent` (not its resource tracker)."""
    workers = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            status, cmdline = (proc / "status").read_text(), (proc / "cmdline").read_bytes()
        except OSError:  # ended while we looked
            continue
        if f"\nPPid:\t{parent}\n" in status and b"spawn_main" in cmdline:
            workers.append(int(proc.name))
    return workers


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")
def test_killing_the_training_benchmark_also_stops_its_worker(tmp_path):
    """Each case runs in a worker process. Killing the command must not leave it running: it would
    keep both cores busy and skew whatever is measured next."""
    cmd = [sys.executable, "-m", "charlm.bench", "training", "--steps", "100000", "--rounds", "1",
           "--case", "gpt_0.2m n_layer=1 n_embd=16 n_head=2", "--out", str(tmp_path)]
    bench = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (workers := pool_workers(bench.pid)):
        assert bench.poll() is None and time.monotonic() < deadline, "the benchmark started no worker"
        time.sleep(0.2)
    time.sleep(3)  # let the worker get into its training loop
    bench.terminate()
    assert bench.wait(timeout=60) != 0
    deadline = time.monotonic() + 30
    while any(running(pid) for pid in workers):
        assert time.monotonic() < deadline, "the worker kept running after the benchmark was killed"
        time.sleep(0.2)
