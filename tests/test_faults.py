"""What clusters and real users do: odd corpora, moved and shared run folders, tools pointed at their
own input, finished runs, impossible sizes, and bad values for every setting."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import forked
import pytest
import torch
import yaml
from conftest import CONF, ROOT, TINY, compose_run, folder_bytes, run_script, sample_in_process
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from charlm.core.cli import user_error
from charlm.core.corpus import load_corpus
from charlm.core.errors import CharLMError
from charlm.core.run_config import check_before_loading
from charlm.core.run_folder import find_checkpoint, hold_run_folder, new_folder, one_writer_at_a_time
from charlm.inference import export, quantize
from charlm.inference.checkpoint import load_model
from charlm.inference.sample import sample
from charlm.tools import bench
from charlm.training.callbacks import RunCheckpoint
from charlm.training.report import validation_curve, write_report


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_a_corpus_without_a_newline_trains_and_samples_from_its_own_first_character(train_here, tmp_path):
    dna = tmp_path / "dna.txt"
    dna.write_text("GATTACA" + "ACGTTGCA" * 400)  # one line, no newline anywhere
    _, run_dir = train_here(*TINY, f"data.path={dna}", "max_steps=10", "eval_interval=5")
    [sample_event, *_] = events(run_dir).Tensors("sample/text_summary")
    assert sample_event.tensor_proto.string_val[0].decode().startswith("    G")  # prompted with the text's start
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_a_sample_prompt_outside_the_vocabulary_fails_before_the_first_step(train_here, tmp_path):
    dna = tmp_path / "dna.txt"
    dna.write_text("ACGT" * 500)
    with pytest.raises(CharLMError, match=r"callbacks.text_sample.prompt has characters the vocabulary lacks: 'Z'"):
        train_here(*TINY, f"data.path={dna}", "callbacks.text_sample.prompt=Z")
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))


def test_a_moved_checkpoint_folder_keeps_its_best_score_and_files():
    moved = RunCheckpoint(dirpath="/new/run/checkpoints", monitor="val/loss")
    moved.load_state_dict({
        "monitor": "val/loss", "best_model_score": torch.tensor(1.5), "dirpath": "/old/run/checkpoints",
        "best_model_path": "/old/run/checkpoints/best-step10-val1.5000.ckpt",
        "best_k_models": {"/old/run/checkpoints/best-step10-val1.5000.ckpt": torch.tensor(1.5)},
        "kth_best_model_path": "/old/run/checkpoints/best-step10-val1.5000.ckpt", "kth_value": torch.tensor(1.5),
        "last_model_path": "/old/run/checkpoints/last.ckpt", "current_score": torch.tensor(1.6),
    })
    assert moved.best_model_score == 1.5  # Lightning alone would forget it, and a worse step would become best
    assert moved.best_model_path == "/new/run/checkpoints/best-step10-val1.5000.ckpt"
    assert list(moved.best_k_models) == ["/new/run/checkpoints/best-step10-val1.5000.ckpt"]
    assert moved.last_model_path == "/new/run/checkpoints/last.ckpt"


def test_resuming_a_moved_run_keeps_the_true_best(train_here, tmp_path):
    _, first = train_here(*TINY, "max_steps=20", "eval_interval=10", "optimizer.decay_steps=1000",
                          run_dir=tmp_path / "first")
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(first, moved)
    # Lightning alone forgets the best on a moved folder: a second best-*.ckpt would appear beside the first
    train_here(*TINY, "max_steps=30", "eval_interval=10", "optimizer.decay_steps=1000", f"ckpt_path={moved}",
               run_dir=tmp_path / "log")
    checkpoint = torch.load(moved / "checkpoints" / "last.ckpt", weights_only=True)
    [state] = [v for k, v in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint{'monitor': 'val/loss'")]
    val = [e.value for e in events(moved).Scalars("val/loss")]
    assert len(val) == 3 and float(state["best_model_score"]) == pytest.approx(min(val))
    [best] = (moved / "checkpoints").glob("best-*.ckpt")
    assert Path(state["best_model_path"]) == best


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    return copy


def folder_state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_no_tool_overwrites_its_input(run_copy):
    last = run_copy / "checkpoints" / "last.ckpt"
    before = folder_state(run_copy)
    with pytest.raises(CharLMError, match="is the input file itself"):
        quantize.main([str(last), "--out", str(last)])
    with pytest.raises(CharLMError, match="is the input file itself"):
        export.main([str(last), "--out", str(last)])
    with pytest.raises(CharLMError, match="is a folder"):
        export.main([str(last), "--out", str(run_copy)])
    assert folder_state(run_copy) == before


def test_no_tool_writes_a_file_under_a_name_that_reads_back_as_the_other_kind(run_copy, tmp_path):
    """Readers take a .npz file for an export, so an int8 model named .npz, or an export named otherwise,
    would be written and then not read back as written: refused before anything is written."""
    last, out = run_copy / "checkpoints" / "last.ckpt", tmp_path / "out"
    out.mkdir()
    with pytest.raises(CharLMError, match=r"^--out .*q\.int8\.npz: a \.npz name would be read as an export; "
                       r"give .*q\.int8\.pt$"):
        quantize.main([str(last), "--out", str(out / "q.int8.npz")])
    for name in ("model.pt", "model"):
        refused = rf"^--out .*{name}: an export needs the \.npz suffix; give .*model\.npz$"
        with pytest.raises(CharLMError, match=refused):
            export.main([str(last), "--out", str(out / name)])
    assert list(out.iterdir()) == []
    quantize.main([str(last), "--out", str(out / "q.int8.pt")])  # the names it suggests read back
    export.main([str(last), "--out", str(out / "model.npz")])
    assert load_model(out / "q.int8.pt").quantization is not None
    assert load_model(out / "model.npz").model_config == load_model(last).model_config
    # an export renamed by hand still reads as an export, by what it holds (on the NumPy engine too)
    shutil.copy(out / "model.npz", out / "renamed.pt")
    assert load_model(out / "renamed.pt").model_config == load_model(last).model_config
    assert sample_in_process(out / "renamed.pt", 20, "T", "backend=numpy") == sample_in_process(last, 20, "T")


def test_quantize_checks_the_text_before_it_writes(run_copy, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("ZZZZ yyyy 0123456789 ~~~~ " * 400)
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be, " * 5)
    before = folder_state(run_copy)
    with pytest.raises(CharLMError, match=r"lacks: '0', '1', .*; give the text the model was trained on with --data"):
        quantize.main([str(run_copy), "--data", str(other)])
    with pytest.raises(CharLMError, match=r"val split of .*short.txt has 10 characters, fewer than one block of 16"):
        quantize.main([str(run_copy), "--data", str(short)])
    assert folder_state(run_copy) == before  # nothing written


def test_int8_files_are_neither_exported_nor_resumed(run_copy, train_here):
    int8 = run_copy / "checkpoints" / "model.int8.pt"
    quantize.main([str(run_copy / "checkpoints" / "last.ckpt"), "--out", str(int8)])
    with pytest.raises(CharLMError, match="holds int8 weights, which the export format does not"):
        export.export(int8)
    events_before = sorted((run_copy / "tb").iterdir())
    with pytest.raises(CharLMError, match=r"holds weights only .*; give the run folder or its last.ckpt"):
        train_here(*TINY, f"ckpt_path={int8}")
    assert sorted((run_copy / "tb").iterdir()) == events_before  # no new event file in the source run


def test_resuming_a_finished_run_says_so_and_changes_nothing(run_copy, train_here, capsys):
    before = folder_state(run_copy)
    best, _ = train_here(*TINY, "max_steps=40", f"ckpt_path={run_copy}")
    assert "already at step 40, and max_steps is 40: nothing to train" in capsys.readouterr().err
    assert folder_state(run_copy) == before
    assert best == json.loads((run_copy / "summary.json").read_text())["best_val_loss"]


def test_a_broken_last_checkpoint_points_to_the_intact_best(run_copy, train_here):
    last = run_copy / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:4000])
    [best] = (run_copy / "checkpoints").glob("best-*.ckpt")
    with pytest.raises(CharLMError, match=rf"not a readable checkpoint.*best checkpoint is intact: .*ckpt_path={best}"):
        train_here(*TINY, f"ckpt_path={run_copy}", "max_steps=60")


def test_tokens_add_up_over_a_resume_with_another_batch_size(train_here, tmp_path):
    _, run_dir = train_here(*TINY, "max_steps=10", "eval_interval=10", "optimizer.decay_steps=100")
    train_here(*TINY, "max_steps=20", "eval_interval=10", "optimizer.decay_steps=100", "batch_size=8",
               f"ckpt_path={run_dir}", run_dir=tmp_path / "log")
    assert json.loads((run_dir / "summary.json").read_text())["tokens"] == 10 * 16 * 16 + 10 * 8 * 16


@pytest.mark.parametrize("override", ["batch_size=10000000", "n_embd=100000"])
def test_a_configuration_that_cannot_fit_in_memory_is_refused_before_allocating(train_here, override):
    with pytest.raises(CharLMError, match=r"needs about [\d,.]+ GiB to train .* GiB is available in RAM"):
        train_here(override)


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_more_samples_than_memory_holds_are_refused_before_allocating(trained_run, backend, capsys):
    """A billion texts of the tiny GPT would need terabytes of caches: one line, before any allocation."""
    with pytest.raises(CharLMError, match=r"^num_samples=1000000000 needs about [\d,.]+ GiB for this model's "
                                          r"caches, but [\d,.]+ GiB is available in RAM; lower num_samples$"):
        sample_in_process(trained_run, 10, "T", "num_samples=1000000000", f"backend={backend}")
    assert "sampling from" not in capsys.readouterr().err  # refused before it starts
    assert len(sample_in_process(trained_run, 10, "T", "num_samples=3", f"backend={backend}").split("\n-")) == 3


BAD_TRAINING = {
    "lr=nan": r"lr must be a finite number > 0, got nan",
    "lr=inf": r"lr must be a finite number > 0, got inf",
    "seed=-1": r"seed must be an integer from 0 to 4294967295, got -1",
    "threads=1000": r"threads must be an integer from 1 to \d+ or null, got 1000",
    "max_time=garbage": r"max_time must be DD:HH:MM:SS",
    "max_time=00:00:00:00": r"max_time must be longer than zero, got 00:00:00:00: the run would train nothing",
    "data.train_fraction=1": r"data.train_fraction must be a finite number in \(0, 1\), got 1",
    "dropout=nan": r"dropout must be a finite number in \[0, 1\), got nan",
    "optimizer.betas=[2,0.9]": r"optimizer.betas\[0\] must be a finite number in \[0, 1\), got 2",
    "trainer.precision=8-bit": r"trainer.precision must be one of",
    "callbacks.early_stopping.patience=-1": r"callbacks.early_stopping.patience must be an integer >= 0",
    "name=a/b": r"name becomes part of a folder's name, so it cannot hold / or \\, got 'a/b'",
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_a_gpu_without_one_is_one_clear_error(train_here):
    with pytest.raises(CharLMError, match=r"needs a CUDA GPU, and torch finds none on this machine"):
        train_here("trainer=gpu")


def compose_sample(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="sample", overrides=list(overrides))


BAD_SAMPLING = {
    "seed=-1": r"seed must be an integer from 0 to 4294967295 or null, got -1",
    "temperature=nan": r"temperature must be a finite number >= 0, got nan",
    "device=foo": r"device must be a torch device such as cpu or cuda, got 'foo'",
    "top_k=0": r"top_k must be a positive integer or null, got 0",
}


BAD_VALUES = [("train", override, message) for override, message in BAD_TRAINING.items()] + \
             [("sample", override, message) for override, message in BAD_SAMPLING.items()]


@pytest.mark.parametrize(("entry", "override", "message"), BAD_VALUES, ids=[f"{e}: {o}" for e, o, _ in BAD_VALUES])
def test_bad_values_get_one_clear_error(train_here, trained_run, entry, override, message):
    with pytest.raises(CharLMError, match=f"^{message}"):
        if entry == "train":
            train_here(override)
        else:
            sample(compose_sample(f"ckpt={trained_run}", override))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_sampling_on_a_missing_gpu_is_one_clear_error(trained_run):
    with pytest.raises(CharLMError, match=r"device=cuda: torch finds no CUDA GPU on this machine; use device=cpu"):
        sample(compose_sample(f"ckpt={trained_run}", "device=cuda"))


FINISHED = json.dumps({"model": "gpt", "best_val_loss": 1.5, "status": "finished"})


def write_run(folder: Path, summary: str) -> None:
    """What the report reads of a run: its Hydra config and summary.json."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("{}")
    (folder / "summary.json").write_text(summary)


def test_a_half_written_summary_is_named_and_the_other_runs_reported(tmp_path):
    write_run(tmp_path / "a", FINISHED)
    write_run(tmp_path / "b", '{"model": "gpt", "best_val')
    write_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "| a | gpt |" in report and "1.5000" in report
    assert f"unreadable summary.json ({tmp_path / 'b' / 'summary.json'})" in report


def test_a_report_names_runs_by_their_arguments_a_removed_group_included(tmp_path):
    for name, argument in (("a", "logger=csv"), ("b", "~logger")):
        write_run(tmp_path / name, FINISHED)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- {argument}\n")
    write_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "| logger=csv | a |" in report and "| ~logger | b |" in report  # not "logger=", an empty value


def test_a_report_draws_runs_that_logged_to_csv_and_no_empty_plot(train_here, tmp_path):
    _, csv_run = train_here(*TINY, "logger=csv", "max_steps=20", "eval_interval=10", run_dir=tmp_path / "csv" / "run")
    curve = validation_curve(csv_run)
    assert [step for step, _ in curve] == [10, 20]
    assert min(loss for _, loss in curve) == pytest.approx(json.loads((csv_run / "summary.json").read_text())
                                                           ["best_val_loss"], abs=1e-6)
    assert (tmp_path / "csv" / "val_loss.png") in write_report(tmp_path / "csv")
    train_here(*TINY, "~logger", "max_steps=10", "eval_interval=10", run_dir=tmp_path / "none" / "run")
    assert write_report(tmp_path / "none") == [tmp_path / "none" / "report.md", tmp_path / "none" / "report.csv"]
    assert not (tmp_path / "none" / "val_loss.png").exists()  # no curve to draw: no empty axes


def test_a_report_tells_a_run_still_training_from_one_that_ended(tmp_path):
    """A live run's lock file names its process; a run that ended, even one whose process goes on (a
    sweep's jobs run one after another in one process), leaves none."""
    write_run(tmp_path / "a", FINISHED)
    with hold_run_folder(tmp_path / "a", resuming=True):  # resumed: its summary.json is the earlier call's
        write_report(tmp_path)
        assert f"| running (pid {os.getpid()}) |" in (tmp_path / "report.md").read_text()
    write_report(tmp_path)
    assert "| finished |" in (tmp_path / "report.md").read_text()


def test_a_report_waits_for_the_one_being_written(tmp_path):
    """A parallel sweep's jobs each rewrite the sweep's report as they end, in turn: a report begun while
    another job writes shows what that job wrote (here its run, which the folder lacked before)."""
    holding = threading.Event()

    def another_job_ending():
        with one_writer_at_a_time(tmp_path):
            holding.set()
            time.sleep(0.3)
            write_run(tmp_path / "a", FINISHED)

    job = threading.Thread(target=another_job_ending)
    job.start()
    holding.wait()
    write_report(tmp_path)  # not in turn, it would find no run and raise
    job.join()
    assert "| a | gpt |" in (tmp_path / "report.md").read_text()


def test_a_report_interrupted_while_it_writes_leaves_the_last_one_whole(tmp_path, monkeypatch):
    """A second Ctrl-C often lands in a sweep's last report: the files it was replacing stay whole."""
    from matplotlib.figure import Figure

    def write_run_with_curve(folder: Path) -> None:
        write_run(folder, FINISHED)
        (folder / "csv").mkdir()
        (folder / "csv" / "metrics.csv").write_text("step,val/loss\n9,1.6\n19,1.5\n")  # as logger=csv writes it

    write_run_with_curve(tmp_path / "a")
    write_report(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in ("report.md", "report.csv", "val_loss.png")}

    def interrupted_savefig(figure, target, **kwargs):
        with open(target, "wb") if isinstance(target, str | Path) else contextlib.nullcontext(target) as file:
            file.write(before["val_loss.png"][:100])  # part of a picture
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", interrupted_savefig)
    write_run_with_curve(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        write_report(tmp_path)
    assert (tmp_path / "val_loss.png").read_bytes() == before["val_loss.png"]
    assert "| b | gpt |" in (tmp_path / "report.md").read_text()  # written whole before the picture
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file() and not p.name.startswith("events.")) == \
        ["report.csv", "report.md", "val_loss.png"]  # no temp file left


def test_a_benchmark_given_zero_threads_is_refused_not_run_with_the_default():
    with pytest.raises(CharLMError, match=r"--threads must be positive"):
        bench.main(["optimizer", "--threads", "0"])


@pytest.mark.parametrize(("case", "message"), [
    ("", r"--case needs a preset name"),
    ("gpt_0.2m notakey=3", r"bad override in 'gpt_0.2m notakey=3': .*notakey"),
])
def test_bad_benchmark_cases_get_one_clear_error(case, message):
    with pytest.raises(CharLMError, match=message):
        bench.main(["training", "--case", case])


def test_a_run_folder_is_held_by_one_live_run(tmp_path):
    with hold_run_folder(tmp_path):
        with pytest.raises(CharLMError, match=rf"{tmp_path} is in use by a live run \(pid {os.getpid()}\)"):
            with hold_run_folder(tmp_path):
                pass
    with hold_run_folder(tmp_path):  # and free again once the first ends
        pass


def test_sampling_a_run_before_its_first_checkpoint_says_it_is_still_training(tmp_path):
    with hold_run_folder(tmp_path):  # a live run (this process) that has saved nothing yet
        (tmp_path / "checkpoints").mkdir()
        for ckpt in (tmp_path, tmp_path / "checkpoints"):
            with pytest.raises(CharLMError, match=rf"in {tmp_path}/checkpoints: its run \(pid {os.getpid()}\) is "
                                                  r"still training, and saves one at its first validation$"):
                find_checkpoint(ckpt)
    ended = subprocess.Popen(["true"])
    ended.wait()
    (tmp_path / ".lock").write_text(str(ended.pid))  # a run that was killed: its lock names a process now gone
    with pytest.raises(CharLMError, match=rf"in {tmp_path}/checkpoints$"):
        find_checkpoint(tmp_path)


def test_a_mistyped_checkpoint_path_names_the_run_it_likely_meant(tmp_path):
    run = tmp_path / "2026-12-03_18-43-16_base"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(CharLMError, match=rf"^checkpoint not found: {tmp_path}/2026-12-03_18-43-16_bse "
                                          rf"\(did you mean {run}\?\)$"):
        find_checkpoint(tmp_path / "2026-12-03_18-43-16_bse")
    with pytest.raises(CharLMError, match=r"^checkpoint not found: \S+/other$"):
        find_checkpoint(tmp_path / "other")


def test_a_finished_runs_folder_is_refused_unless_resumed_and_resuming_keeps_its_log(trained_run, tmp_path):
    out = tmp_path / "out"
    run_dir = out / "runs" / "tiny"
    shutil.copytree(trained_run, run_dir)
    before = folder_bytes(run_dir)
    fresh = run_script("train.py", *TINY, "max_steps=2", f"paths.root={out}", f"hydra.run.dir={run_dir}")
    assert fresh.returncode == 2 and fresh.stderr == (
        f"error: {run_dir} holds a finished run (40 steps): resume it with ckpt_path={run_dir} (and a larger "
        "max_steps: it takes the arguments it was started with), or leave out hydra.run.dir and this run gets a new "
        "folder\n")
    assert folder_bytes(run_dir) == before
    nothing_to_do = run_script("train.py", *TINY, "max_steps=40", f"ckpt_path={run_dir}", f"paths.root={out}")
    assert nothing_to_do.returncode == 0 and "nothing to train, nothing changed" in nothing_to_do.stderr
    assert folder_bytes(run_dir) == before and [p.name for p in (out / "runs").iterdir()] == ["tiny"]
    # only what changes: the model and the rest come from the arguments the run was started with
    resumed = run_script("train.py", "max_steps=45", f"ckpt_path={run_dir}", f"paths.root={out}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    started_with = [*TINY, "eval_interval=20"]  # (its max_steps=40 and hydra.run.dir are not carried over)
    assert f"resuming {run_dir} with the arguments it was started with: {' '.join(started_with)}\n" in resumed.stderr
    assert [p.name for p in (out / "runs").iterdir()] == ["tiny"]  # it wrote into the run it resumed, only
    log = (run_dir / "train.log").read_text()
    assert log.startswith(before["train.log"].decode()) and f"resuming {run_dir / 'checkpoints' / 'last.ckpt'}" in log
    assert yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) == [
        *started_with, "max_steps=45", f"ckpt_path={run_dir}", f"paths.root={out}"]  # the resume's own config


@pytest.mark.parametrize(("rank", "hpc"), [("0", False), ("0", True), ("1", False)])
def test_the_early_folder_check_leaves_requeues_and_other_ranks_to_the_run(trained_run, tmp_path, monkeypatch,
                                                                            rank, hpc):
    """A new run into a finished run's folder is refused before the heavy imports; a SLURM requeue (an
    hpc_ckpt file) resumes there, and a DDP rank other than zero shares the folder rank zero holds."""
    run_dir = tmp_path / "tiny"
    shutil.copytree(trained_run, run_dir)
    if hpc:
        shutil.copy(run_dir / "checkpoints" / "last.ckpt", run_dir / "hpc_ckpt_1.ckpt")
    monkeypatch.setenv("LOCAL_RANK", rank)
    cfg = compose_run(run_dir, *TINY)
    try:
        if rank == "0" and not hpc:
            with pytest.raises(CharLMError, match="holds a finished run"):
                check_before_loading(cfg)
        else:
            check_before_loading(cfg)
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.parametrize("override", ["lr=nan", "ckpt_path=last", "data.path=nope.txt"])
def test_a_refused_run_leaves_no_folder_behind(override, tmp_path):
    result = run_script("train.py", *TINY, override, f"paths.root={tmp_path / 'out'}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_a_sweep_into_an_earlier_sweeps_folder_is_refused(tmp_path):
    (tmp_path / "0_model=cnn" / ".hydra").mkdir(parents=True)
    before = folder_bytes(tmp_path)
    result = run_script("train.py", "-m", "model=cnn,gpt", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 2 and result.stderr == (
        f"error: {tmp_path} holds an earlier sweep's runs; leave out hydra.sweep.dir and this sweep gets a new folder, "
        "or resume a job with ckpt_path=<its folder>\n")
    assert folder_bytes(tmp_path) == before


def test_runs_started_together_get_their_own_folders(tmp_path):
    assert new_folder(str(tmp_path / "x")) == str(tmp_path / "x")
    assert new_folder(str(tmp_path / "x")) == str(tmp_path / "x-2")
    processes = [forked.start([ROOT / "train.py", *TINY, "max_steps=3", "eval_interval=3",
                               f"paths.root={tmp_path / 'out'}"], ROOT) for _ in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-2000:]
    runs = sorted((tmp_path / "out" / "runs").iterdir())
    assert len(runs) == 2
    for run in runs:  # each its own: config, summary, one event file, its own log
        assert json.loads((run / "summary.json").read_text())["steps"] == 3
        assert len(list((run / "tb").glob("events.*"))) == 1
        assert "run gpt" in (run / "train.log").read_text()


def test_user_errors_inside_hydra_wrappers_and_file_errors_are_one_line():
    inner = CharLMError("data.train_fraction must be between 0 and 1")
    try:
        raise InstantiationException("Error in call to target 'charlm.training.callbacks.RunCheckpoint':\n"
                                     "CharLMError(...)") from inner
    except InstantiationException as wrapped:
        assert user_error(wrapped) is inner
    try:  # `+trainer.foo=1`: arguments that do not build the object are the config's error, not a bug
        instantiate({"_target_": "lightning.pytorch.Trainer", "foo": 1})
    except InstantiationException as unbuilt:
        assert user_error(unbuilt) is unbuilt and "unexpected keyword argument 'foo'" in str(unbuilt)
    denied = PermissionError(13, "Permission denied", "/x/report.md")
    assert str(user_error(denied)) == "Permission denied: /x/report.md"
    assert user_error(ZeroDivisionError("a bug")) is None  # a bug keeps its traceback


def test_a_byte_order_mark_is_not_text(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffhello".encode())
    corpus = load_corpus(str(path), "chars", tmp_path / "cache")
    assert corpus.vocab.chars == "ehlo" and corpus.vocab.decode(corpus.tokens.tolist()) == "hello"


def test_slurm_requeue_saves_and_the_requeued_job_resumes(tmp_path):
    """Lightning's SLURM auto-requeue: SIGUSR1 (sbatch --signal=SIGUSR1@90) saves hpc_ckpt_1.ckpt in the run
    folder and asks scontrol to requeue (absent here: a warning); the requeued job, given the same run
    folder, resumes from it."""
    run_dir = tmp_path / "job"
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "charlm", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
             "SLURM_NODELIST": "127.0.0.1"}
    args = [ROOT / "train.py", *TINY, "eval_interval=20", f"hydra.run.dir={run_dir}"]
    process = forked.start([*args, "max_steps=100000"], ROOT, slurm)

    def wait_for(path: Path) -> None:
        deadline = time.time() + 120
        while not path.is_file():
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.time() < deadline, f"no {path.name}"
            time.sleep(0.05)

    wait_for(run_dir / "checkpoints" / "last.ckpt")  # training, with Lightning's signal handlers in place
    process.send_signal(signal.SIGUSR1)
    wait_for(run_dir / "hpc_ckpt_1.ckpt")  # written atomically: complete once it exists
    process.kill()
    process.wait()
    saved = torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"]
    requeued = forked.run([*args, f"max_steps={saved + 5}"], ROOT, slurm)
    assert requeued.returncode == 0, requeued.stderr[-2000:]
    assert f"resuming {run_dir / 'hpc_ckpt_1.ckpt'} at step {saved}" in requeued.stdout
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == saved + 5


def test_train_log_holds_what_the_run_printed(trained_run):
    log = (trained_run / "train.log").read_text()
    assert "run gpt: gpt, " in log and "best checkpoint: " in log and "GPU available" in log
    best = json.loads((trained_run / "summary.json").read_text())["best_val_loss"]
    validations = [line.split("][INFO] ")[1] for line in log.splitlines() if ": val/loss " in line]
    assert [line.split(":")[0] for line in validations] == ["step 20/40", "step 40/40"]  # one per validation
    assert f"(best {best:.4f} at step " in validations[-1] and "; train/loss " in validations[-1]


def test_a_model_too_large_for_memory_is_refused_through_the_command_line(tmp_path):
    """OOM-safety as a process shows it: one line and exit status 2 within seconds, not the OOM killer."""
    result = run_script("train.py", "n_embd=100000", f"hydra.run.dir={tmp_path / 'b'}")
    assert result.returncode == 2 and "needs about" in result.stderr and result.stderr.count("\n") == 1
