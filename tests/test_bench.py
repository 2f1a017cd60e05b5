"""The benchmark command runs and writes its tables. Speed itself is measured, never asserted, in tests."""

import json
import subprocess
import sys

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
    assert all(r["cached_tokens_per_s"] > 0 and r["recompute_tokens_per_s"] > 0 for r in rows)
    assert all((r["compile_s"] > 0) if r["backend"] == "torch+compile" else r["compile_s"] == "-" for r in rows)
    assert "warning" not in result.stderr  # it compiled rather than falling back
    assert "| gpt_0.2m | torch | cpu | 208,145 | 1 | 40 |" in (tmp_path / "generation.md").read_text()


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
    assert row["bare_ms_per_step"] > 0 and row["lightning_ms_per_step"] > 0 and 0 < row["mfu_lightning"] < 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_a_gpu_without_one_is_one_clear_error(tmp_path):
    cmd = [sys.executable, "-m", "charlm.bench", "generation", "--device", "cuda", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "--device cuda: this machine has no CUDA GPU" in result.stderr and "Traceback" not in result.stderr
