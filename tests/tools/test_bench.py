"""The benchmark command runs and writes its tables. Speed itself is measured, never asserted, in tests."""

import json
import time
from pathlib import Path

import forked
import pytest
import torch
from conftest import ROOT, refusal

from charlm.core.errors import CharLMError
from charlm.inference.checkpoint import load_model
from charlm.models import count_parameters
from charlm.tools.bench import main as bench_main


def test_generation_benchmark_writes_markdown_and_json(tmp_path):
    """The table's rows and ratios. (--compile adds a torch+compile row per GPT preset; it is left out
    here because a compile into an empty Inductor cache is slow, and the compiled step itself is tested
    in tests/inference/test_sampling.py.)"""
    bench_main(["generation", "--presets", "gpt_0.2m,cnn_0.2m", "--numpy", "--tokens", "40", "--batch", "1,2",
                "--repeats", "1", "--device", "cpu", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "generation.json").read_text())["rows"]
    assert [(r["preset"], r["backend"], r["batch"]) for r in rows] == [
        ("gpt_0.2m", "torch", 1), ("gpt_0.2m", "torch", 2), ("gpt_0.2m", "numpy", 1), ("gpt_0.2m", "numpy", 2),
        ("cnn_0.2m", "torch", 1), ("cnn_0.2m", "torch", 2)]
    assert all(r["speedup"] == pytest.approx(r["cached_tokens_per_s"] / r["recompute_tokens_per_s"]) for r in rows)
    assert all(r["compile_s"] == "-" for r in rows)
    assert "| gpt_0.2m | torch | cpu | 207,681 | 1 | 40 |" in (tmp_path / "generation.md").read_text()


def test_unknown_preset_is_one_clear_error(tmp_path, capsys):
    error = refusal(bench_main, ["generation", "--presets", "gpt_9m", "--out", str(tmp_path)], capsys)
    assert error.startswith("error: unknown preset 'gpt_9m'; presets: cnn_0.2m") and error.count("\n") == 1
    for kind in ("speedrun", "sample"):  # refused at once, in this process, before any run or nanoGPT's minutes
        error = refusal(bench_main, [kind, "--case", "gpt_9m", "--out", str(tmp_path)], capsys)
        assert error.startswith("error: unknown preset 'gpt_9m'; presets: cnn_0.2m") and error.count("\n") == 1
    error = refusal(bench_main, ["speedrun", "--nanogpt", str(tmp_path / "none"), "--out", str(tmp_path)], capsys)
    assert error.startswith(f"error: --nanogpt {tmp_path / 'none'}: not a nanoGPT checkout")
    assert list(tmp_path.iterdir()) == []  # and nothing written


def test_training_benchmark_times_both_loops(tmp_path):
    case = "gpt_0.2m n_layer=1 n_embd=16 n_head=2"
    bench_main(["training", "--steps", "20", "--rounds", "1", "--case", case, "--out", str(tmp_path)])
    [row] = json.loads((tmp_path / "training.json").read_text())["rows"]
    assert row["case"] == case and row["tokens_per_step"] == 16 * 32
    step_s = row["lightning_ms_per_step"] / 1e3
    assert row["lightning_over_bare"] == pytest.approx(row["bare_ms_per_step"] / row["lightning_ms_per_step"])
    assert row["lightning_tokens_per_s"] == pytest.approx(16 * 32 / step_s)
    assert row["mfu_lightning"] == pytest.approx(row["model_gflop_per_step"] / step_s / row["peak_gflop_per_s"])
    assert 0 < row["mfu_lightning"] < 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_a_gpu_without_one_is_one_clear_error(tmp_path, capsys):
    error = refusal(bench_main, ["generation", "--device", "cuda", "--out", str(tmp_path)], capsys)
    assert error == "error: --device cuda: this machine has no CUDA GPU that torch can use\n"


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
    bench = forked.start(["-m", "charlm", "bench", "training", "--steps", "100000", "--rounds", "1",
                          "--case", "gpt_0.2m n_layer=1 n_embd=16 n_head=2", "--out", tmp_path], ROOT)
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


def test_the_validation_clock_records_every_validation(tmp_path):
    """The speed-run's clock, in a real run: one line per validation, with the loss the run logged,
    training seconds that exclude validation, and validation seconds that grow with each one."""
    from conftest import TINY, train_in_process

    clock = tmp_path / "clock.jsonl"
    best = train_in_process(tmp_path / "run", *TINY, "max_steps=30", "eval_interval=10",
                            "+callbacks.clock._target_=charlm.tools.bench_speedrun.ValidationClock",
                            f"+callbacks.clock.path={clock}")
    records = [json.loads(line) for line in clock.read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30]
    assert min(r["val_loss"] for r in records) == pytest.approx(best)
    for earlier, later in zip(records, records[1:], strict=False):
        assert 0 < earlier["train_s"] < later["train_s"] and 0 < earlier["validation_s"] < later["validation_s"]
        # the training between two validations lies between their results (the checkpoints written after
        # each result count as validation time, and vary with the machine's load: no tighter bound holds)
        assert later["time"] - earlier["time"] >= later["train_s"] - earlier["train_s"]


FAKE_NANOGPT = """
import sys, time
print("number of parameters: 0.20M")
for step, loss in [(0, 4.2), (250, 3.0), (500, 2.0), (750, 1.9)]:
    print(f"step {step}: train loss {loss - 0.1:.4f}, val loss {loss:.4f}", flush=True)
    time.sleep(0.2)
"""


def test_the_speedrun_benchmark_times_a_run_beside_nanogpt(tmp_path):
    """A real training case and a stand-in for nanoGPT's train.py (its output lines): both timed to each
    threshold, and nanoGPT's final loss (1.9) joins the thresholds."""
    nanogpt = tmp_path / "nanoGPT"
    (nanogpt / "data" / "shakespeare_char").mkdir(parents=True)
    (nanogpt / "train.py").write_text(FAKE_NANOGPT)
    (nanogpt / "data" / "shakespeare_char" / "prepare.py").write_text(
        "open('train.bin', 'wb').close(); open('meta.pkl', 'wb').close()")
    case = ("gpt_0.2m n_layer=1 n_embd=16 n_head=2 block_size=16 max_steps=20 eval_interval=10 lr=0.01 "
            "optimizer.warmup_steps=2")
    bench_main(["speedrun", "--case", case, "--thresholds", "4.1,2.5", "--nanogpt", str(nanogpt),
                "--nanogpt-args", "config/x.py", "--out", str(tmp_path / "out")])
    assert (nanogpt / "data" / "shakespeare_char" / "input.txt").stat().st_size == 1_115_394  # the shipped text
    nano, ours = json.loads((tmp_path / "out" / "speedrun.json").read_text())["rows"]
    assert nano["run"] == "nanoGPT config/x.py" and nano["best_val_loss"] == 1.9 and nano["steps"] == 750
    assert nano["process_s_to_4.1"] < nano["process_s_to_2.5"] < nano["process_s_to_1.9"] < nano["process_s"]
    assert nano["train_s_to_2.5"] == "-"  # its evaluations run inside its loop: only process times
    assert ours["run"] == case and ours["steps"] == 20 and ours["best_val_loss"] < 4.1
    assert 0 < ours["train_s_to_4.1"] < ours["process_s_to_4.1"] < ours["process_s"]
    assert ours["process_s_to_1.9"] == "-"  # not reached
    assert 0 < ours["validation_s"] < ours["process_s"]


FAKE_NANOGPT_MODEL = """
import time
from dataclasses import dataclass

@dataclass
class GPTConfig:
    n_layer: int; n_head: int; n_embd: int; block_size: int; vocab_size: int; dropout: float; bias: bool

class GPT:
    def __init__(self, config):
        print("shape:", config.n_layer, config.n_head, config.n_embd, config.block_size, config.bias)
    def eval(self):
        return self
    def generate(self, idx, tokens, temperature, top_k):
        time.sleep(tokens / 100)
"""


def test_the_sample_benchmark_times_the_whole_command_beside_nanogpts_generate(tmp_path):
    """A real run folder and sample.py process, and a stand-in for nanoGPT's model.py built at the run's
    shape: generate()'s own seconds (0.2 s of sleep for 20 characters) against the whole process."""
    with pytest.raises(CharLMError, match="not a nanoGPT checkout"):
        bench_main(["sample", "--nanogpt", str(tmp_path), "--out", str(tmp_path / "out")])
    nanogpt = tmp_path / "nanoGPT"
    nanogpt.mkdir()
    (nanogpt / "model.py").write_text(FAKE_NANOGPT_MODEL)
    case = "gpt_0.2m n_layer=1 n_embd=16 n_head=2 block_size=16"
    bench_main(["sample", "--case", case, "--tokens", "20", "--rounds", "1", "--nanogpt", str(nanogpt),
                "--out", str(tmp_path / "out")])
    [row] = json.loads((tmp_path / "out" / "sample.json").read_text())["rows"]
    [run] = (tmp_path / "out" / "sample" / "runs").iterdir()  # the run folder it sampled from
    assert (row["case"], row["new_tokens"], row["parameters"]) == (case, 20, count_parameters(load_model(run).model))
    assert 0.2 <= row["nanogpt_generate_s"] < 1  # the call alone: importing torch takes longer
    assert row["sample_py_s"] > 0.1  # the whole process, interpreter start included
    assert row["nanogpt_over_sample_py"] == pytest.approx(row["nanogpt_generate_s"] / row["sample_py_s"])


def test_the_pictures_benchmark_weighs_a_picture_against_the_runs_steps(tmp_path):
    bench_main(["pictures", "--steps", "20", "--case", "gpt_0.2m max_steps=100 eval_interval=25", "--case",
                "cnn_0.2m", "--out", str(tmp_path)])
    gpt, cnn = json.loads((tmp_path / "pictures.json").read_text())["rows"]
    assert (gpt["case"], gpt["validations"], cnn["validations"]) == ("gpt_0.2m max_steps=100 eval_interval=25", 5, 11)
    for row in (gpt, cnn):
        assert row["pictures_s"] == pytest.approx(row["picture_ms"] / 1e3 * row["validations"])
        assert row["share_pct"] == pytest.approx(100 * row["pictures_s"] / row["training_steps_s"])
