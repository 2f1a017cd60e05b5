"""The user's path through the real command line: train, look in TensorBoard, sample, resume, mistakes."""

import csv
import importlib.util
import json
import logging
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import forked
import pytest
import torch
import yaml
from conftest import CONF, ROOT, TINY, TINY_RUN, run_script, sample_in_process
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2
from test_usability import hparams_of

from charlm.core.errors import CharLMError
from charlm.core.prompts import take_text_arguments
from charlm.inference.sample import sample


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
    # the learning-rate monitor logs the schedule on logging steps: step k (0-based) is k+1 of 100+1 warm-up steps
    lrs = {e.step: e.value for e in events.Scalars("lr/adamw")}
    assert lrs == pytest.approx({9: 1e-3 * 10 / 101, 19: 1e-3 * 20 / 101, 29: 1e-3 * 30 / 101, 39: 1e-3 * 40 / 101})
    bpc = [e.value for e in events.Scalars("val/bpc")]
    assert bpc == pytest.approx([e.value / math.log(2) for e in events.Scalars("val/loss")])
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
    # the best-checkpoint callback's state travels too (resume keeps the true best): score and file
    [best] = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint") and "val/loss" in k]
    [best_file] = (trained_run / "checkpoints").glob("best-*.ckpt")
    assert Path(best["best_model_path"]) == best_file
    assert f"val{float(best['best_model_score']):.4f}" in best_file.name


def test_sample_streams_text_from_a_run_folder(trained_run, tmp_path):
    result = run_script("sample.py", f"ckpt={trained_run}", "prompt=ROMEO:", "num_tokens=60", "seed=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:")
    assert len(result.stdout) == len("ROMEO:") + 60 + 1
    assert "sampling from" in result.stderr and "best-step" in result.stderr
    assert list(tmp_path.iterdir()) == []  # sampling leaves nothing behind

    # Same seed, same text, and the same run as a fresh interpreter's: the tests fork their command-line
    # runs from a process that has made the imports (forked.py), this one starts Python anew.
    again = forked.run([ROOT / "sample.py", f"ckpt={trained_run}", "prompt=ROMEO:", "num_tokens=60", "seed=3"],
                       tmp_path, fresh=True)
    assert (again.returncode, again.stdout, again.stderr) == (0, result.stdout, result.stderr)


def test_a_sampling_sweep_leaves_nothing_behind(trained_run, tmp_path):
    """`sample.py -m`: each sample printed, each named by what the sweep varies; Hydra's record of the
    sweep goes to a temporary folder that is gone once the sweep ends, not into the current folder."""
    scratch = set(Path(tempfile.gettempdir()).glob("charlm-sweep-*"))
    result = run_script("sample.py", "-m", f"ckpt={trained_run}", "prompt=ROMEO:", "num_tokens=10",
                        "temperature=0.5,1.0", "seed=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ROMEO:") == 2
    assert [line.rpartition("; ")[2] for line in result.stderr.splitlines() if line.startswith("sampling from")] \
        == ["temperature=0.5", "temperature=1.0"]
    assert list(tmp_path.iterdir()) == []
    assert set(Path(tempfile.gettempdir()).glob("charlm-sweep-*")) == scratch


def test_greedy_batched_samples_are_identical(trained_run):
    last = trained_run / "checkpoints" / "last.ckpt"
    result = run_script("sample.py", f"ckpt={last}", "temperature=0", "num_samples=3", "num_tokens=30")
    assert result.returncode == 0, result.stderr
    samples = result.stdout.split("\n" + "-" * 40 + "\n")
    assert len(samples) == 3 and len(set(samples)) == 1


def test_sampling_with_compile_falls_back_to_the_eager_text_without_a_compiler(trained_run, tmp_path, monkeypatch):
    """sample.py hands compile=true to the runner, which falls back to eager generation where it cannot
    compile. (That a compiled step writes the eager text is tested on the runner, in test_sampling.py.)"""
    eager = sample_in_process(trained_run, 60, "T", "temperature=0")
    monkeypatch.setenv("CXX", "/bin/false")  # a machine without a working C++ compiler
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # and nothing compiled before
    fallback = run_script("sample.py", f"ckpt={trained_run}", "num_tokens=60", "prompt=T", "seed=0", "temperature=0",
                          "compile=true")
    assert fallback.returncode == 0, fallback.stderr
    assert "compiling the generation step for batch 1" in fallback.stderr
    assert "warning: compile=true failed, generating eagerly" in fallback.stderr
    assert fallback.stdout == eager


def test_resume_continues_from_the_last_step_in_the_same_run_folder(trained_run, tmp_path, train_here, recwarn):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # leave the shared run untouched
    before = set((run / "tb").glob("events.out.tfevents.*"))
    train_here(*TINY, "max_steps=60", "eval_interval=20", f"ckpt_path={run}", run_dir=tmp_path / "resume-log")
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message)]  # its own folder: no alarm
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 60
    [resumed_events] = set((run / "tb").glob("events.out.tfevents.*")) - before
    events = EventAccumulator(str(resumed_events))
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [59]  # only the steps after 40 were trained


def test_resume_rejects_a_checkpoint_of_another_model(trained_run, train_here):
    with pytest.raises(CharLMError, match=r"its model differs \(n_layer: 1 there, 2 here\)"):
        train_here(*TINY, "n_layer=2", "max_steps=60", f"ckpt_path={trained_run}")


def write(path, data: bytes):
    path.write_bytes(data)
    return path


BAD_DATA = {
    "missing": (lambda d: d / "nope.txt", r"data file not found: .*nope\.txt"),
    "directory": (lambda d: d, r"data path is a directory, not a text file"),
    "empty": (lambda d: write(d / "empty.txt", b""), r"data file is empty: .*empty\.txt"),
    "too short": (lambda d: write(d / "short.txt", b"to be or not to be\n" * 5),
                  r"too short: 95 characters; with block_size=16 each split needs at least 17, "
                  r"so the file needs at least 161 "),
    "not utf-8": (lambda d: write(d / "latin1.txt", "café crème\n".encode("latin-1") * 100),
                  r"not UTF-8 text: .*latin1\.txt \(invalid byte at offset 3\)"),
    "binary": (lambda d: write(d / "blob.bin", bytes(range(256)) * 10), r"looks binary"),
}


@pytest.mark.parametrize("case", BAD_DATA, ids=list(BAD_DATA))
def test_bad_data_gets_one_clear_error(case, tmp_path, train_here):
    """Each is a CharLMError, which the entry point prints as one line (test_reliability checks that)."""
    make_path, message = BAD_DATA[case]
    with pytest.raises(CharLMError, match=message) as caught:
        train_here(*TINY, "max_steps=5", f"data.path={make_path(tmp_path)}")
    assert "\n" not in str(caught.value)


BAD_SAMPLING = {
    "unknown prompt characters": (["prompt='hello {world} é'"], r"not in the model's vocabulary: '\{', '\}', 'é'"),
    "missing checkpoint": (["ckpt=/no/such.ckpt"], r"checkpoint not found: /no/such\.ckpt"),
    "bad temperature": (["temperature=-1"], r"temperature must be a finite number >= 0, got -1"),
    "bad top_p": (["top_p=1.5"], r"top_p must be a finite number in \(0, 1\] or null, got 1.5"),
    "compile with numpy": (["compile=true", "backend=numpy"], r"compile=true needs backend=torch"),
    "numpy on a GPU": (["device=cuda", "backend=numpy"], r"device=cuda needs backend=torch \(the NumPy engine"),
}


def compose_sample(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="sample", overrides=list(overrides))


@pytest.mark.parametrize("case", BAD_SAMPLING, ids=list(BAD_SAMPLING))
def test_bad_sampling_input_gets_one_clear_error(case, trained_run):
    args, message = BAD_SAMPLING[case]
    if not any(a.startswith("ckpt=") for a in args):
        args = [f"ckpt={trained_run}", *args]
    with pytest.raises(CharLMError, match=message):
        sample(compose_sample(*args))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncate"], ids=["empty", "text", "truncated"])
def test_corrupt_checkpoints_are_rejected(content, trained_run, tmp_path):
    bad = tmp_path / "bad.ckpt"
    if content == "truncate":
        content = (trained_run / "checkpoints" / "last.ckpt").read_bytes()[:5000]
    bad.write_bytes(content)
    with pytest.raises(CharLMError, match="not a readable checkpoint"):
        sample(compose_sample(f"ckpt={bad}"))


def test_a_checkpoint_in_torchs_legacy_format_still_loads(trained_run, tmp_path):
    """Checkpoints are memory-mapped where torch can map them; its legacy (pre-zip) format is read whole."""
    last = trained_run / "checkpoints" / "last.ckpt"
    legacy = tmp_path / "legacy.ckpt"
    torch.save(torch.load(last, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    assert sample_in_process(legacy, 30) == sample_in_process(last, 30)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("n_embd=30", r"n_embd \(30\) must be divisible by n_head \(4\)"),
        ("lr=0", r"lr must be a finite number > 0, got 0"),
        ("max_steps=-5", "max_steps must be a positive integer"),
        ("dropout=1.5", r"dropout must be a finite number in \[0, 1\), got 1.5"),
    ],
)
def test_impossible_config_gets_one_clear_error(override, expected, train_here):
    with pytest.raises(CharLMError, match=expected):
        train_here(override)


CONFIG_ERRORS = {  # caught while Hydra composes the config, before torch loads
    "nlayer=3": "nlayer is not a setting (--help lists them; +nlayer=VALUE adds a new key)",
    "seed=abc": "Error merging override seed=abc: Value 'abc' of type 'str' could not be converted to Integer",
    "compile=maybe": "Error merging override compile=maybe: Value 'maybe' is not a valid bool (type str)",
    "model=cnn model.n_head=2": "model.n_head applies to model=gpt, not to this run's model",
    "experiment=gpt_0.2m model=cnn": "model.activation applies to model=gpt, not to this run's model; "
                                     "experiment/gpt_0.2m_published sets it: a preset is made for its own model "
                                     "(choose one for this model, or leave out model=)",  # Hydra's five lines before
    "optimizer.muon_typo=1": "optimizer.muon_typo is not a setting (--help lists them; +optimizer.muon_typo=VALUE "
                             "adds a new key)",
    "model=transformer": "In 'config': Could not find 'model/transformer'; choose one of: cnn, gpt",
    "logger=null": "logger=null: a config group takes one of its options (csv, mlflow, tensorboard, wandb), or "
                   "~logger for none",  # Hydra's answer was a traceback
    "~data": "~data: a run needs one data option; choose one of: shakespeare",
    "hydra.job.chdir=true": "hydra.job.chdir=true: a run reads every path from the folder it was started in, and "
                            "writes all its files into its run folder already; leave it out",  # relative paths broke
}


CONFIG_ERRORS_ELSEWHERE = {
    "sample.py seed=abc": "Error merging override seed=abc: Value 'abc' of type 'str' could not be converted to "
                          "Integer",
    "evaluate.py data.train_fraction=abc": "Error merging override data.train_fraction=abc: Value 'abc' of type 'str' "
                                           "could not be converted to Float",
    "evaluate.py stides=3": "stides is not a setting (--help lists them; +stides=VALUE adds a new key)",
    "sample.py model=null": "model=null: a config group takes one of its options (cnn, gpt), or ~model for none",
    "sample.py prompt=To be": "'be' is not key=value: each option is one key=value argument (a value with spaces "
                              "goes in quotes: key=\"a b\")",  # the shell split an unquoted prompt
}


@pytest.mark.parametrize("overrides", list(CONFIG_ERRORS))
def test_keys_and_types_the_schema_refuses_get_one_line(tmp_path, overrides):
    result = run_script("train.py", *overrides.split(), f"hydra.run.dir={tmp_path / 'run'}")
    assert (result.returncode, result.stderr) == (2, f"error: {CONFIG_ERRORS[overrides]}\n")


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None,
                    reason="the [slurm] extra is installed here")
def test_a_launcher_whose_extra_is_missing_says_how_to_install_it(tmp_path):
    result = run_script("train.py", "-m", "hydra/launcher=submitit_slurm", "seed=1,2", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 2 and result.stderr.startswith(
        "error: In 'hydra/config': Could not find 'hydra/launcher/submitit_slurm'; it comes with "
        "pip install -e \".[slurm]\"; choose one of: basic")


@pytest.mark.parametrize("command", list(CONFIG_ERRORS_ELSEWHERE))
def test_sample_and_evaluate_schemas_refuse_in_one_line_too(command):
    script, *overrides = command.split()
    result = run_script(script, *overrides)
    assert (result.returncode, result.stderr) == (2, f"error: {CONFIG_ERRORS_ELSEWHERE[command]}\n")


def sweep(tmp_path, *args):
    """A sweep into tmp_path, named relative to the folder it starts in (as Hydra's default sweep dir is)."""
    return run_script("train.py", "-m", *TINY, "max_steps=20", "eval_interval=10",
                      f"hydra.sweep.dir={tmp_path.name}", *args, cwd=tmp_path.parent)


def report_rows(folder):
    with (folder / "report.csv").open() as file:
        return list(csv.DictReader(file))


def test_sweep_over_both_models_writes_a_comparison_report(tmp_path, monkeypatch):
    root = tmp_path.parent / "elsewhere"
    result = sweep(tmp_path, "model=cnn,gpt", f"paths.root={root}", "logger=[tensorboard,mlflow]")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert jobs == ["0_model=cnn", "1_model=gpt"]  # named by what the sweep varies, one level deep
    assert f"  tensorboard --logdir {tmp_path}\n" in result.stdout  # pasted anywhere, it finds the sweep
    # the commands the run prints work when pasted: the job folder's '=' and ',' stay part of the path
    [pasted] = [line.split()[-1] for line in result.stdout.splitlines()
                if line.startswith(f"  python {ROOT / 'sample.py'} ")][:1]
    argv = ["sample.py", pasted]
    take_text_arguments(argv)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        assert compose(config_name="sample", overrides=argv[1:]).ckpt == str(tmp_path / jobs[0])
    rows = report_rows(tmp_path)
    assert [(row["run"], row["model"]) for row in rows] == [("model=cnn", "cnn"), ("model=gpt", "gpt")]
    for row in rows:
        assert row["status"] == "finished" and int(row["steps"]) == 20 and int(row["tokens"]) == 20 * 16 * 16
        summary = json.loads((tmp_path / row["folder"] / "summary.json").read_text())
        assert float(row["best_val_loss"]) == pytest.approx(summary["best_val_loss"], abs=1e-9)
        assert summary["best_val_loss"] < math.log(65)  # better than guessing
        assert float(row["tokens_per_s"]) * float(row["wall_time_s"]) == pytest.approx(20 * 16 * 16, rel=1e-6)
    assert (tmp_path / "val_loss.png").stat().st_size > 10_000
    assert "| model=cnn | 0_model=cnn | cnn |" in (tmp_path / "report.md").read_text()
    # TensorBoard on the sweep folder compares both runs by their settings, the swept one first
    assert [hparams_of(tmp_path / job)[0]["model"] for job in jobs] == ["cnn", "gpt"]
    assert sweep_hparams(tmp_path)[:2] == [("model", True), ("batch_size", False)]  # then the rest, by name
    # MLflow: both jobs in one experiment named after the sweep, each run named by what it varies
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(root)  # a client makes ./mlruns, its default artifact root, where it starts
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(tmp_path.name).experiment_id])
    assert sorted(run.info.run_name for run in runs) == ["model=cnn", "model=gpt"]


def sweep_hparams(folder: Path) -> list[tuple[str, bool]]:
    """The HParams columns (name, marked as differing: TensorBoard puts those first and ticks them), in
    order, of the experiment the sweep folder's report wrote for TensorBoard."""
    [file] = folder.glob("events.out.tfevents.*")
    for event in EventFileLoader(str(file)).Load():
        for value in event.summary.value:
            if value.tag == "_hparams_/experiment":
                data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                return [(info.name, info.differs) for info in data.experiment.hparam_infos]
    return []


def test_a_parallel_sweep_keeps_going_past_a_failing_job(tmp_path):
    """Two jobs at once with the joblib launcher, one of them refused: the other finishes and is reported."""
    result = sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "threads=1",
                   "n_embd=15,16")  # 15 is not divisible by n_head=2
    assert result.returncode != 0  # the sweep as a whole reports the failure
    assert "error: model gpt: n_embd (15) must be divisible by n_head (2)" in result.stderr
    assert [(row["run"], row["status"]) for row in report_rows(tmp_path)] == [("n_embd=16", "finished")]
    assert [job.name for job in tmp_path.iterdir() if job.is_dir()] == ["1_n_embd=16"]  # the refused job left no folder


def test_optuna_search_gets_each_trials_best_val_loss(tmp_path):
    result = run_script("train.py", "hparams_search=lr_size", "hydra.sweeper.n_trials=2", *TINY[:1], *TINY[3:],
                        "max_steps=20", "eval_interval=10", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    rows = report_rows(tmp_path)
    assert len(rows) == 2 and {"lr", "n_embd"} <= best["best_params"].keys()
    assert best["best_value"] == pytest.approx(min(float(row["best_val_loss"]) for row in rows), abs=1e-6)


def test_fine_tuning_starts_from_the_checkpoint_and_keeps_its_vocabulary(trained_run, tmp_path, train_here, capsys):
    corpus = tmp_path / "sonnet.txt"
    corpus.write_text("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n" * 60)
    _, tuned_run = train_here(*TINY_RUN, f"init_from={trained_run}", f"data.path={corpus}", "lr=1e-9",
                              "optimizer.warmup_steps=0", "max_steps=10", "eval_interval=10")
    assert "fine-tuning" in capsys.readouterr().out
    tuned = torch.load(tuned_run / "checkpoints" / "last.ckpt", weights_only=True)
    source = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert tuned["hyper_parameters"]["vocab"] == source["hyper_parameters"]["vocab"]  # 65 characters, not the sonnet's
    for key, value in source["state_dict"].items():  # lr 1e-9: the weights are still the checkpoint's
        torch.testing.assert_close(tuned["state_dict"][key], value, atol=1e-5, rtol=0)


def test_fine_tuning_on_text_with_unknown_characters_lists_them(trained_run, tmp_path, train_here):
    corpus = tmp_path / "prices.txt"
    corpus.write_text("The price is 5€ {approx} and ~~ more.\n" * 100)
    with pytest.raises(CharLMError) as caught:
        train_here(*TINY_RUN, f"init_from={trained_run}", f"data.path={corpus}")
    assert str(caught.value) == f"{corpus} has characters the model's vocabulary lacks: '5', '{{', '}}', '~', '€'"


def test_profiler_knob_prints_lightning_hook_timings(train_here, caplog):
    """trainer.profiler=simple swaps our no-op profiler for Lightning's timing one."""
    caplog.set_level(logging.INFO)
    train_here(*TINY, "max_steps=10", "eval_interval=10", "trainer.profiler=simple")
    assert "FIT Profiler Report" in caplog.text and "run_training_batch" in caplog.text


def test_a_reader_that_stops_reading_is_not_an_error():
    """`sample.py | head -c 100`: the pipe closes under the writer; every entry point runs in run_cli."""
    writer = ("from charlm.core.cli import run_cli; "
              "run_cli(lambda: [print('x' * 1000, flush=True) for _ in range(1000)])")
    result = subprocess.run(["bash", "-c", f'"{sys.executable}" -c "{writer}" | head -c 100 > /dev/null; '
                                           'echo "${PIPESTATUS[0]}"'], capture_output=True, text=True, timeout=60)
    assert (result.stdout, result.stderr) == ("0\n", "")
