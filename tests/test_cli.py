"""The user's path through the real command line: train, look in TensorBoard, sample, resume, mistakes."""

import csv
import json
import re
import shutil

import pytest
import torch
import yaml
from conftest import TINY, run_script
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def test_training_writes_checkpoints_config_and_tensorboard(trained_run):
    checkpoints = trained_run / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    assert len(list(checkpoints.glob("best-step*-val*.ckpt"))) == 1
    assert (trained_run / ".hydra" / "config.yaml").is_file()
    assert not list(checkpoints.glob(".*.tmp"))  # atomic saves leave no temp files

    events = EventAccumulator(str(trained_run / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "val/loss", "val/bpc"} <= set(scalars)
    assert any(tag.startswith("lr-") for tag in scalars)
    val_steps = [e.step for e in events.Scalars("val/loss")]
    assert val_steps == [19, 39]  # a validation every 20 steps
    samples = events.Tensors("sample/text_summary")
    assert [s.step for s in samples] == [20, 40]  # one generated sample per validation
    assert len(samples[-1].tensor_proto.string_val[0].decode()) > 40


def test_checkpoint_carries_everything_sampling_needs(trained_run):
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = ckpt["hyper_parameters"]
    assert hparams["model"]["n_embd"] == 16 and hparams["model"]["name"] == "gpt"
    assert len(hparams["vocab"]) == 65
    assert ckpt["global_step"] == 40
    bpc = ckpt["callbacks"]
    assert any("ModelCheckpoint" in key for key in bpc)


def test_sample_streams_text_from_a_run_folder(trained_run, tmp_path):
    result = run_script("sample.py", f"ckpt={trained_run}", "prompt=ROMEO:", "num_tokens=60", "seed=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:")
    assert len(result.stdout) == len("ROMEO:") + 60 + 1
    assert "sampling from" in result.stderr and "best-step" in result.stderr
    assert list(tmp_path.iterdir()) == []  # sampling leaves nothing behind

    again = run_script("sample.py", f"ckpt={trained_run}", "prompt=ROMEO:", "num_tokens=60", "seed=3", cwd=tmp_path)
    assert again.stdout == result.stdout  # same seed, same text


def test_greedy_batched_samples_are_identical(trained_run):
    last = trained_run / "checkpoints" / "last.ckpt"
    result = run_script("sample.py", f"ckpt={last}", "temperature=0", "num_samples=3", "num_tokens=30")
    assert result.returncode == 0, result.stderr
    samples = result.stdout.split("\n" + "-" * 40 + "\n")
    assert len(samples) == 3 and len(set(samples)) == 1


def test_compiled_sampling_writes_the_eager_text_and_falls_back_without_a_compiler(trained_run, tmp_path,
                                                                                   monkeypatch):
    args = [f"ckpt={trained_run}", "temperature=0", "num_tokens=60"]
    eager = run_script("sample.py", *args)
    compiled = run_script("sample.py", *args, "compile=true")
    assert compiled.returncode == 0, compiled.stderr
    assert "compiling the generation step" in compiled.stderr and "warning" not in compiled.stderr
    assert compiled.stdout == eager.stdout

    monkeypatch.setenv("CXX", "/bin/false")  # a machine without a working C++ compiler
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # and nothing compiled before
    fallback = run_script("sample.py", *args, "compile=true")
    assert fallback.returncode == 0, fallback.stderr
    assert "warning: compile=true failed, generating eagerly" in fallback.stderr
    assert fallback.stdout == eager.stdout


def test_resume_continues_from_the_last_step_in_the_same_run_folder(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # leave the shared run untouched
    result = run_script("train.py", *TINY, "max_steps=60", "eval_interval=20", f"ckpt_path={run}",
                        f"hydra.run.dir={tmp_path / 'resume-log'}")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 60
    newest_events = sorted((run / "tb").glob("events.out.tfevents.*"))[-1]
    events = EventAccumulator(str(newest_events))
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [59]  # only the steps after 40 were trained


def test_resume_rejects_a_checkpoint_of_another_model(trained_run, tmp_path):
    result = run_script("train.py", *TINY, "n_layer=2", "max_steps=60", f"ckpt_path={trained_run}",
                        f"hydra.run.dir={tmp_path / 'x'}")
    assert result.returncode == 2
    assert "its model differs (n_layer: 1 there, 2 here)" in result.stderr
    assert "Traceback" not in result.stderr


def write(path, data: bytes):
    path.write_bytes(data)
    return path


BAD_DATA = {
    "missing": (lambda d: d / "nope.txt", r"data file not found: .*nope\.txt"),
    "directory": (lambda d: d, r"data path is a directory, not a text file"),
    "empty": (lambda d: write(d / "empty.txt", b""), r"data file is empty: .*empty\.txt"),
    "too short": (lambda d: write(d / "short.txt", b"to be or not to be\n" * 5),
                  r"too short: 95 characters; with block_size=16 each split needs at least 17"),
    "not utf-8": (lambda d: write(d / "latin1.txt", "café crème\n".encode("latin-1") * 100),
                  r"not UTF-8 text: .*latin1\.txt \(invalid byte at offset 3\)"),
    "binary": (lambda d: write(d / "blob.bin", bytes(range(256)) * 10), r"looks binary"),
}


@pytest.mark.parametrize("case", BAD_DATA, ids=list(BAD_DATA))
def test_bad_data_gets_one_clear_error_line(case, tmp_path):
    make_path, message = BAD_DATA[case]
    result = run_script("train.py", *TINY, "max_steps=5", f"data.path={make_path(tmp_path)}",
                        f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert re.search(message, result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0  # one line


BAD_SAMPLING = {
    "unknown prompt characters": (["prompt='hello {world} é'"], r"not in the model's vocabulary: '\{', '\}', 'é'"),
    "missing checkpoint": (["ckpt=/no/such.ckpt"], r"checkpoint not found: /no/such\.ckpt"),
    "bad temperature": (["temperature=-1"], r"temperature must be 0 \(greedy\) or positive"),
    "bad top_p": (["top_p=1.5"], r"top_p must be in \(0, 1\]"),
    "compile with numpy": (["compile=true", "backend=numpy"], r"compile=true needs backend=torch"),
}


@pytest.mark.parametrize("case", BAD_SAMPLING, ids=list(BAD_SAMPLING))
def test_bad_sampling_input_gets_one_clear_error_line(case, trained_run):
    args, message = BAD_SAMPLING[case]
    if not any(a.startswith("ckpt=") for a in args):
        args = [f"ckpt={trained_run}", *args]
    result = run_script("sample.py", *args)
    assert result.returncode == 2
    assert re.search(message, result.stderr), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncate"], ids=["empty", "text", "truncated"])
def test_corrupt_checkpoints_are_rejected(content, trained_run, tmp_path):
    bad = tmp_path / "bad.ckpt"
    if content == "truncate":
        content = (trained_run / "checkpoints" / "last.ckpt").read_bytes()[:5000]
    bad.write_bytes(content)
    result = run_script("sample.py", f"ckpt={bad}")
    assert result.returncode == 2
    assert "not a readable checkpoint" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("n_embd=30", r"n_embd \(30\) must be divisible by n_head \(4\)"),
        ("lr=0", "lr must be a positive number"),
        ("max_steps=-5", "max_steps must be a positive integer"),
        ("dropout=1.5", r"dropout must be in \[0, 1\)"),
    ],
)
def test_impossible_config_gets_one_clear_error_line(override, expected, tmp_path):
    result = run_script("train.py", override, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert re.search(expected, result.stderr), result.stderr
    assert "Traceback" not in result.stderr


def test_misspelled_key_is_rejected_by_hydra(tmp_path):
    result = run_script("train.py", "nlayer=3", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert "nlayer" in result.stderr and "Traceback" not in result.stderr


def sweep(tmp_path, *args):
    return run_script("train.py", "-m", *TINY, "max_steps=20", "eval_interval=10",
                      f"hydra.sweep.dir={tmp_path}", *args)


def report_rows(folder):
    with (folder / "report.csv").open() as file:
        return list(csv.DictReader(file))


def test_sweep_over_both_models_writes_a_comparison_report(tmp_path):
    result = sweep(tmp_path, "model=cnn,gpt")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert len(jobs) == 2 and jobs[0].startswith("0_") and "model=cnn" in jobs[0] and "model=gpt" in jobs[1]
    rows = report_rows(tmp_path)
    assert [row["model"] for row in rows] == ["cnn", "gpt"]
    for row in rows:
        assert row["status"] == "finished" and int(row["steps"]) == 20 and int(row["tokens"]) == 20 * 16 * 16
        assert 0 < float(row["best_val_loss"]) < 5 and float(row["tokens_per_s"]) > 0
    assert (tmp_path / "val_loss.png").stat().st_size > 10_000
    assert "| cnn |" in (tmp_path / "report.md").read_text()


def test_a_failing_sweep_job_does_not_stop_the_others(tmp_path):
    result = sweep(tmp_path, "n_embd=15,16")  # 15 is not divisible by n_head=2
    assert result.returncode != 0  # the sweep as a whole reports the failure
    assert "error: model gpt: n_embd (15) must be divisible by n_head (2)" in result.stderr
    rows = report_rows(tmp_path)
    assert [row["status"] for row in rows] == ["failed or unfinished", "finished"]


def test_parallel_sweep_with_the_joblib_launcher(tmp_path):
    result = sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "threads=1", "model=cnn,gpt")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(row["model"] for row in report_rows(tmp_path)) == ["cnn", "gpt"]


def test_optuna_search_gets_each_trials_best_val_loss(tmp_path):
    result = run_script("train.py", "hparams_search=lr_size", "hydra.sweeper.n_trials=2", *TINY[:1], *TINY[3:],
                        "max_steps=20", "eval_interval=10", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    rows = report_rows(tmp_path)
    assert len(rows) == 2 and {"lr", "n_embd"} <= best["best_params"].keys()
    assert best["best_value"] == pytest.approx(min(float(row["best_val_loss"]) for row in rows), abs=1e-6)


def test_fine_tuning_starts_from_the_checkpoint_and_keeps_its_vocabulary(trained_run, tmp_path):
    corpus = tmp_path / "sonnet.txt"
    corpus.write_text("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n" * 60)
    result = run_script("train.py", *TINY, f"init_from={trained_run}", f"data.path={corpus}", "lr=1e-9",
                        "optimizer.warmup_steps=0", "max_steps=10", "eval_interval=10",
                        f"hydra.run.dir={tmp_path / 'ft'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fine-tuning" in result.stdout
    tuned = torch.load(tmp_path / "ft" / "checkpoints" / "last.ckpt", weights_only=True)
    source = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert tuned["hyper_parameters"]["vocab"] == source["hyper_parameters"]["vocab"]  # 65 characters, not the sonnet's
    for key, value in source["state_dict"].items():  # lr 1e-9: the weights are still the checkpoint's
        torch.testing.assert_close(tuned["state_dict"][key], value, atol=1e-5, rtol=0)


def test_fine_tuning_on_text_with_unknown_characters_lists_them(trained_run, tmp_path):
    corpus = tmp_path / "prices.txt"
    corpus.write_text("The price is 5€ {approx} and ~~ more.\n" * 100)
    result = run_script("train.py", *TINY, f"init_from={trained_run}", f"data.path={corpus}",
                        f"hydra.run.dir={tmp_path / 'ft'}")
    assert result.returncode == 2
    assert f"{corpus} has characters the model's vocabulary lacks: '5', '{{', '}}', '~', '€'" in result.stderr


def test_early_stopping_ends_a_run_that_stopped_improving(tmp_path):
    result = run_script("train.py", *TINY, "lr=1e-12", "max_steps=200", "eval_interval=5",
                        "callbacks.early_stopping.patience=2", "callbacks.early_stopping.min_delta=0.001",
                        f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "stopped early" and summary["steps"] == 15  # checks at 5, 10, 15: no gain after 5
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_max_time_ends_a_run_at_its_wall_clock_budget(tmp_path):
    result = run_script("train.py", *TINY, "max_time=00:00:00:03", "max_steps=1000000", "eval_interval=100",
                        f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "stopped early" and 0 < summary["steps"] < 1_000_000
    assert summary["wall_time_s"] < 60


def test_profiler_knob_prints_lightning_hook_timings(tmp_path):
    """trainer.profiler=simple swaps our no-op profiler for Lightning's timing one."""
    args = [*TINY, "max_steps=10", "eval_interval=10", f"hydra.run.dir={tmp_path}"]
    profiled = run_script("train.py", *args, "trainer.profiler=simple")
    assert profiled.returncode == 0, profiled.stderr[-3000:]
    assert "FIT Profiler Report" in profiled.stdout + profiled.stderr
    assert "run_training_batch" in profiled.stdout + profiled.stderr
