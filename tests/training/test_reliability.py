"""Crash safety, resume, interrupts, non-finite losses, determinism: through the real command line."""

import csv
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import forked
import lightning as L
import pytest
import torch
import yaml
from conftest import ROOT, TINY, TINY_RUN, folder_bytes, run_script, sample_in_process, train_in_process
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from charlm.core.atomic import atomic_write
from charlm.core.cli import user_error
from charlm.core.errors import CharLMError
from charlm.core.run_config import with_run_arguments
from charlm.core.run_folder import hold_run_folder
from charlm.training.callbacks import GracefulInterrupt
from charlm.training.lightning_module import LanguageModel
from charlm.training.train import resume_command

# Dropout on, so resuming must restore random states too; a fixed decay horizon, so a run may stop
# (max_steps) earlier than another without changing the learning-rate schedule.
STEADY = [*TINY, "dropout=0.1", "optimizer.decay_steps=2000", "trainer.log_every_n_steps=1", "eval_interval=50"]


def step_losses(events: Path) -> dict[int, float]:
    """train/loss by step from a run's tb/ folder, or from one event file of it."""
    accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {e.step: e.value for e in accumulator.Scalars("train/loss")}


def event_files(run_dir: Path) -> set[Path]:
    return set((run_dir / "tb").glob("events.out.tfevents.*"))


def saved_step(checkpoint: Path) -> int:
    try:
        return torch.load(checkpoint, weights_only=True)["global_step"]
    except Exception:  # not written yet
        return -1


def start_training(run_dir: Path, *args: str) -> forked.Run:
    return forked.start([ROOT / "train.py", *STEADY, f"hydra.run.dir={run_dir}", *args], ROOT)


def wait_for_checkpoint(process: forked.Run, checkpoint: Path, step: int, timeout: float = 120) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "training ended before it could be interrupted"
        if (found := saved_step(checkpoint)) >= step:
            return found
        time.sleep(0.02)
    raise TimeoutError


def wait_for_message(process: forked.Run, text: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while text not in process.stderr_so_far():
        assert process.poll() is None and time.time() < deadline, process.stderr_so_far()[-2000:]
        time.sleep(0.01)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The reference for exact resume: 150 steps in one go (in this process: the same code as a command
    line run, without its start-up)."""
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    train_in_process(run_dir, *STEADY, "max_steps=150")
    return run_dir


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_resume_after_a_kill_continues_exactly_like_an_uninterrupted_run(tmp_path, uninterrupted, stop, capsys):
    crashed = tmp_path / "crashed"
    process = start_training(crashed, "max_steps=2000")
    wait_for_checkpoint(process, crashed / "checkpoints" / "last.ckpt", 50)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    resumed_from = saved_step(crashed / "checkpoints" / "last.ckpt")
    assert 50 <= resumed_from < 150
    if stop == signal.SIGTERM:  # what schedulers send: save at a step boundary, say how to resume, exit 143
        assert process.returncode == 143, stderr[-2000:]
        assert f"SIGTERM: saved {crashed / 'checkpoints' / 'last.ckpt'} at step {resumed_from}" in stderr
        assert f"resume with python {ROOT / 'train.py'} ckpt_path={crashed}\n" in stderr  # ready to paste
        summary = json.loads((crashed / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["steps"] == resumed_from

    # The crash needs a process of its own; the resume runs here, as `train.py ... ckpt_path=crashed` would.
    before = event_files(crashed)
    seconds_before = torch.load(crashed / "checkpoints" / "last.ckpt", weights_only=True)["wall_time_s"]
    train_in_process(tmp_path / "resume-log", *STEADY, "max_steps=150", f"ckpt_path={crashed}")
    printed = capsys.readouterr().out
    assert f"resuming {crashed / 'checkpoints' / 'last.ckpt'} at step {resumed_from}" in printed
    # the run's wall time spans both calls: the crashed one's up to its checkpoint, and the resume's
    summary = json.loads((crashed / "summary.json").read_text())
    this_call = (150 - resumed_from) * 16 * 16 / summary["tokens_per_s"]
    assert seconds_before > 0 and summary["wall_time_s"] == pytest.approx(seconds_before + this_call, rel=1e-9)
    assert f"; {summary['wall_time_s']:.1f} s in all, with the calls it resumed" in printed
    [resumed_events] = event_files(crashed) - before  # not the last name: names hold whole seconds, then the pid
    whole, after = step_losses(uninterrupted / "tb"), step_losses(resumed_events)
    assert sorted(after) == list(range(resumed_from, 150))  # logged at step index: steps resumed_from+1 .. 150
    for step, loss in after.items():
        assert loss == pytest.approx(whole[step], abs=1e-6), f"step {step + 1}"
    assert saved_step(crashed / "checkpoints" / "last.ckpt") == 150  # in the same run folder


def test_a_resume_takes_the_arguments_its_run_was_started_with(tmp_path, monkeypatch):
    """Before the ones given now, which win knob by knob (a copy such as trainer.max_steps counts as its
    owner); never the old ckpt_path, nor a search; nothing for a sweep or a folder that is not a run."""
    run = tmp_path / "runs" / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").touch()
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        ["experiment=gpt_0.2m", "trainer.max_steps=100", "ckpt_path=old", "hparams_search=lr_size",
         "~callbacks.early_stopping", "init_from='/a b'", "lr=1e-3"]))
    carried = ["experiment=gpt_0.2m", "~callbacks.early_stopping", "init_from='/a b'"]
    for where in ("last", run, run / "checkpoints" / "last.ckpt"):
        argv = ["train.py", f"ckpt_path={where}", f"paths.root={tmp_path}", "max_steps=200", "+lr=2e-3"]
        with_run_arguments(argv)
        assert argv == ["train.py", *carried, f"ckpt_path={where}", f"paths.root={tmp_path}", "max_steps=200",
                        "+lr=2e-3"]
    monkeypatch.setenv("HOME", str(tmp_path))  # paths.root as typed: `~` as the shell would expand it
    argv = ["train.py", "ckpt_path=last", "paths.root=~"]
    with_run_arguments(argv)
    assert argv == ["train.py", "experiment=gpt_0.2m", "trainer.max_steps=100", "~callbacks.early_stopping",
                    "init_from='/a b'", "lr=1e-3", "ckpt_path=last", "paths.root=~"]
    for argv in (["train.py", "-m", f"ckpt_path={run}"], ["train.py", f"ckpt_path={tmp_path}"], ["train.py", "lr=1"]):
        unchanged = list(argv)
        with_run_arguments(argv)
        assert argv == unchanged
    # relative paths read where the run was started (hydra.yaml records it): a resume from elsewhere reads them
    started_in = tmp_path / "started in"
    (started_in / "data").mkdir(parents=True)
    (started_in / "data" / "corpus.txt").touch()
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"cwd": str(started_in)}}}))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        ["data.path='data/corpus.txt'", "data.cache_dir=gone", "data.vocab=bytes", "init_from=/abs.ckpt"]))
    argv = ["train.py", f"ckpt_path={run}"]
    with_run_arguments(argv)
    assert argv == ["train.py", f"data.path={started_in / 'data' / 'corpus.txt'}", "data.cache_dir=gone",
                    "data.vocab=bytes", "init_from=/abs.ckpt", f"ckpt_path={run}"]
    # a recorded argument this release does not know (a renamed knob): the error says where it came from
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model=cnn", "model.num_layers=3"]))
    result = run_script("train.py", f"ckpt_path={run}")
    assert result.returncode == 2 and result.stderr.endswith(
        f"error: model.num_layers is not a setting (--help lists them; +model.num_layers=VALUE adds a new key) "
        f"(an argument of the run, from {run / '.hydra' / 'overrides.yaml'})\n")


def test_a_fine_tuning_run_resumes_with_its_checkpoints_model(train_here, trained_run, tmp_path, capsys):
    """init_from gives the model and vocabulary (here block_size 16, not the default 32), ckpt_path the
    state: what `train.py ckpt_path=RUN` does with a fine-tuning run's own arguments."""
    fine_tune = [*TINY_RUN, f"init_from={trained_run}", "lr=1e-4", "eval_interval=4"]
    _, tuned = train_here(*fine_tune, "max_steps=4", run_dir=tmp_path / "tuned")
    train_here(*fine_tune, "max_steps=8", f"ckpt_path={tuned}", run_dir=tmp_path / "unused")
    checkpoint = torch.load(tuned / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 8 and checkpoint["hyper_parameters"]["model"]["block_size"] == 16
    assert f"resuming {tuned / 'checkpoints' / 'last.ckpt'} at step 4" in capsys.readouterr().out


# One start-up (torch and Lightning take seconds), then a forked writer per line read: each saves
# versions 1, 2, ... through the trainer's checkpoint IO, printing each version it completed, until killed.
WRITERS = """
import os, sys, torch
from charlm.training.trainer import AtomicCheckpointIO
io = AtomicCheckpointIO()
for path in sys.stdin:
    pid = os.fork()
    if pid == 0:
        i = 0
        while True:
            i += 1
            io.save_checkpoint({"version": i, "weights": torch.full((15_000_000,), float(i))}, path.strip())
            print(os.getpid(), i, flush=True)
    os.waitpid(pid, 0)
    print("killed", flush=True)
"""


def test_killing_a_checkpoint_write_never_corrupts_the_file(tmp_path):
    target = tmp_path / "last.ckpt"
    writers = subprocess.Popen([sys.executable, "-c", WRITERS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    for delay in (0.05, 0.13, 0.31):
        writers.stdin.write(f"{target}\n")
        writers.stdin.flush()
        pid = int(writers.stdout.readline().split()[0])  # one complete save
        time.sleep(delay)  # then die somewhere inside a later one
        os.kill(pid, signal.SIGKILL)
        while writers.stdout.readline() != "killed\n":  # the writer is gone
            pass
        checkpoint = torch.load(target, weights_only=True)
        assert torch.equal(checkpoint["weights"], torch.full((15_000_000,), float(checkpoint["version"])))
    writers.stdin.close()
    assert writers.wait(timeout=30) == 0
    # Temp files of killed writes never replace the target; the run that resumes in the folder removes them.
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".last.ckpt.999.tmp").write_bytes(b"half")
    with hold_run_folder(tmp_path, resuming=True):
        assert list(tmp_path.rglob(".*.tmp")) == [] and target.is_file()


class FullDisk(L.Callback):
    """Points last.ckpt's temp file at /dev/full, a device that is always full, once the run has started."""

    def on_train_start(self, trainer, pl_module):
        (Path(trainer.checkpoint_callback.dirpath) / f".last.ckpt.{os.getpid()}.tmp").symlink_to("/dev/full")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_full_disk_stops_the_run_in_one_line_and_it_resumes_once_there_is_room(train_here, tmp_path, capsys):
    """The real error of a full disk, wrapped by torch.save, becomes one line naming the file and the resume
    command; what was saved stays."""
    run_dir = tmp_path / "run"
    with pytest.raises(CharLMError) as refused:
        train_here(*TINY, "max_steps=20", "eval_interval=10", f"+callbacks.full_disk._target_={__name__}.FullDisk",
                   "callbacks.progress_bar.refresh_rate=1")
    assert str(refused.value) == (
        f"No space left on device: {run_dir / 'checkpoints' / 'last.ckpt'}; {run_dir / 'checkpoints'} holds the "
        f"last saved step: resume with {resume_command(run_dir)} once it can be written")
    [saved] = (run_dir / "checkpoints").iterdir()
    assert saved.name.startswith("best-step10-")  # the first validation's checkpoint, saved before last.ckpt
    assert capsys.readouterr().out.endswith("\n")  # the error's line starts below the progress bar
    train_here(*TINY, "max_steps=20", "eval_interval=10", f"ckpt_path={run_dir}")  # the link went with the write
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 20


def test_atomic_write_names_the_file_a_full_disk_refused_and_leaves_it_as_it_was(tmp_path):
    """torch.save's own error about a full disk becomes the OSError it stands for, naming the file, which every
    entry point prints as one line, and which the token cache, for one, answers by encoding into memory."""
    target = tmp_path / "weights.pt"
    target.write_bytes(b"earlier")
    if Path("/dev/full").exists():
        (tmp_path / f".weights.pt.{os.getpid()}.tmp").symlink_to("/dev/full")
        with pytest.raises(OSError) as refused:
            atomic_write(target, lambda file: torch.save(torch.zeros(100_000), file))
        assert (refused.value.errno, refused.value.filename) == (errno.ENOSPC, str(target))
        assert str(user_error(refused.value)) == f"No space left on device: {target}"
    with pytest.raises(ZeroDivisionError):  # a bug in the writer is not the system's refusal: raised as it is
        atomic_write(target, lambda file: 1 / 0)
    assert target.read_bytes() == b"earlier" and [p.name for p in tmp_path.iterdir()] == ["weights.pt"]


def test_a_live_runs_folder_is_refused_before_anything_in_it_changes(tmp_path):
    run_dir = tmp_path / "run"
    live = start_training(run_dir, "max_steps=100000")
    try:
        wait_for_checkpoint(live, run_dir / "checkpoints" / "last.ckpt", 50)
        os.kill(live.pid, signal.SIGSTOP)  # frozen, so its own writes cannot change the folder meanwhile
        before = folder_bytes(run_dir)
        second = run_script("train.py", *TINY, "n_layer=2", "lr=5e-3", f"hydra.run.dir={run_dir}")
        assert second.returncode == 2
        assert second.stderr == f"error: {run_dir} is in use by a live run (pid {live.pid}); wait for it to end, or " \
                                "give this run its own folder\n"
        assert folder_bytes(run_dir) == before  # config, log, checkpoints: byte for byte
    finally:
        os.kill(live.pid, signal.SIGCONT)
        live.kill()
        live.communicate()


def test_ctrl_c_saves_a_checkpoint_and_stops(tmp_path):
    run_dir = tmp_path / "run"
    process = start_training(run_dir, "max_steps=100000", "eval_interval=50")
    wait_for_checkpoint(process, run_dir / "checkpoints" / "last.ckpt", 50)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "SIGINT: finishing this step, saving a checkpoint" in stderr  # said at once, from the handler
    assert "interrupted: SIGINT: saved" in stderr and f"ckpt_path={run_dir}" in stderr
    stopped_at = saved_step(run_dir / "checkpoints" / "last.ckpt")
    assert 50 <= stopped_at < 100000
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == stopped_at and summary["tokens"] == stopped_at * 16 * 16
    assert summary["status"] == "interrupted"
    [best] = (run_dir / "checkpoints").glob("best-*.ckpt")  # the stop was validated, so it may be the best
    assert step_losses(run_dir / "tb")  # and the run's log has its steps
    assert len(sample_in_process(run_dir)) == 1 + 20 + 1  # and it samples


def test_a_second_ctrl_c_stops_at_once_with_status_130(tmp_path):
    run_dir = tmp_path / "run"
    # one-block validation batches over 40,000 characters: the validation after the first Ctrl-C runs
    # 2,500 batches, time for a second, sent as soon as the first is acknowledged
    process = start_training(run_dir, "max_steps=100000", "eval_interval=20", "data.eval_batch_size=1",
                             "data.max_val_tokens=40000")
    wait_for_checkpoint(process, run_dir / "checkpoints" / "last.ckpt", 20)
    process.send_signal(signal.SIGINT)
    wait_for_message(process, "finishing this step")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted: SIGINT again: stopped at once" in stderr and "Traceback" not in stderr


def test_sigterm_in_a_sweep_reports_the_jobs_that_ran_and_stops(tmp_path):
    process = forked.start([ROOT / "train.py", "-m", *STEADY, "max_steps=100000", f"hydra.sweep.dir={tmp_path}",
                            "seed=1,2"], ROOT)
    deadline = time.time() + 120
    while not (jobs := list(tmp_path.glob("0_*"))) and time.time() < deadline:
        time.sleep(0.05)
    wait_for_checkpoint(process, jobs[0] / "checkpoints" / "last.ckpt", 50)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-2000:]
    with (tmp_path / "report.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(row["run"], row["folder"], row["status"]) for row in rows] == [("seed=1", jobs[0].name, "interrupted")]
    assert not any(tmp_path.glob("1_*"))  # the second job never started
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(train_here, tmp_path):
    with pytest.raises(CharLMError) as caught:
        train_here(*TINY, "lr=1000", "optimizer.warmup_steps=0", "trainer.gradient_clip_val=0", "eval_interval=1",
                   "max_steps=50")
    found = re.fullmatch(r"(?:training|validation) loss became (nan|inf) at step (\d+); stopped\. "
                         r"Last good checkpoint: (\S+)\. Try a lower lr\.", str(caught.value))
    assert found, str(caught.value)
    bad_step, last_good = int(found[2]), Path(found[3])
    assert last_good == tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last_good, weights_only=True)
    assert checkpoint["global_step"] == bad_step - 1  # validated after every step: the step just before
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values() if t.is_floating_point())


def test_the_validation_loss_weighs_batches_by_tokens_and_a_nan_batch_makes_it_nan():
    """A NaN batch is not left out of the mean, which would report the finite rest as the model's loss."""
    module = LanguageModel({"name": "gpt", "n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 8}, "abc",
                           {"lr": 1e-3})
    module.val_loss.update(torch.tensor(1.0), weight=64)
    module.val_loss.update(torch.tensor(2.5), weight=32)  # a last, shorter batch
    assert module.val_loss.compute().item() == pytest.approx((64 * 1.0 + 32 * 2.5) / 96)
    module.val_loss.update(torch.tensor(float("nan")), weight=64)
    assert module.val_loss.compute().isnan()


def test_ctrl_c_never_saves_diverged_weights(tmp_path):
    # The loss is checked only on logging steps, so a Ctrl-C between a divergence and the next
    # check must not replace the last good last.ckpt. The check runs before the trainer is used.
    module = LanguageModel({"name": "gpt", "n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 8}, "abc",
                           {"lr": 1e-3})
    with torch.no_grad():
        module.model.head.weight[0, 0] = float("nan")
    interrupt = GracefulInterrupt()
    interrupt.signum = signal.SIGINT
    with pytest.raises(CharLMError, match="no longer finite"):
        interrupt.on_train_batch_end(None, module)
    assert interrupt.saved_at is None


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
def test_slurms_requeue_signal_is_handled_at_the_end_of_the_step():
    """Lightning's requeue handler flushes the loggers: run inside the signal handler it waited forever
    when the signal landed during a TensorBoard flush (the writer's lock held). It now runs at the end of
    the step or validation batch, and only Lightning's own handler is wrapped (none outside SLURM)."""
    calls = []
    lightnings = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append((signum, frame)))
    try:
        interrupt, single = GracefulInterrupt(), SimpleNamespace(world_size=1)
        interrupt.on_train_start(single, None)
        signal.raise_signal(signal.SIGUSR1)
        assert calls == []  # not inside the signal handler
        interrupt.on_train_batch_end(single, None)
        assert calls == [(signal.SIGUSR1, None)]  # at the step's end
        interrupt.on_train_batch_end(single, None)
        assert len(calls) == 1  # once per signal
        signal.raise_signal(signal.SIGUSR1)
        interrupt.on_validation_batch_end(single, None, None, None, 0)
        assert len(calls) == 2  # during a validation: at the end of its batch
        interrupt.on_train_end(single, None)
        assert signal.getsignal(signal.SIGUSR1) is not interrupt._request_requeue  # Lightning's back
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        interrupt.on_train_start(single, None)
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # not under SLURM: left alone
        interrupt.on_train_end(single, None)
    finally:
        signal.signal(signal.SIGUSR1, lightnings)


def test_same_seed_gives_identical_losses(tmp_path, train_here):
    runs = {}
    for name, seed in [("a", 7), ("b", 7), ("c", 8)]:
        train_here(*STEADY, f"seed={seed}", "max_steps=30", run_dir=tmp_path / name)
        runs[name] = step_losses(tmp_path / name / "tb")
    assert len(runs["a"]) == 30 and runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


ENTRY_POINTS = {
    "train: an error of ours": (["train.py", *TINY, "max_steps=100", "trainer.max_steps=60"],
                                r"^error: trainer.max_steps=60 and max_steps=100 disagree"),
    "train: unwritable output folder": (["train.py", "hydra.run.dir={file}/run"], r"^error: cannot write to .*/run: "),
    "train: misspelled group option": (["train.py", "model=gtp"], r"Could not find 'model/gtp'"),
    "train: resume on other text": (["train.py", *TINY, "data.path={text}", "ckpt_path={run}"],
                                    r"different vocabulary"),
    "sample: directory as checkpoint": (["sample.py", "ckpt={tmp}"], r"no checkpoint \(best\*.ckpt or last.ckpt\)"),
    "evaluate: a sweep's folder": (["evaluate.py", "ckpt={runs}"],
                                   r"holds runs, not a checkpoint: give one of them \(.*tiny\), or -m ckpt="),
    "sample: numpy backend, not a checkpoint": (["sample.py", "backend=numpy", "ckpt={file}"],
                                                r"not a readable checkpoint"),
    "export: not a checkpoint": (["-m", "charlm", "export", "{file}"], r"not a readable checkpoint"),
    "quantize: missing checkpoint": (["-m", "charlm", "quantize", "{tmp}/none.ckpt"], r"checkpoint not found"),
    "report: no runs": (["-m", "charlm", "report", "{tmp}"], r"no runs \(folders with .hydra/config.yaml\)"),
    "bench: bad number": (["-m", "charlm", "bench", "training", "--steps", "0"], r"must be positive"),
}


@pytest.mark.parametrize("case", ENTRY_POINTS, ids=list(ENTRY_POINTS))
def test_every_entry_point_rejects_bad_input_in_one_line(case, trained_run, tmp_path):
    args, message = ENTRY_POINTS[case]
    (tmp_path / "file.txt").write_text("just some text, not a checkpoint")
    (tmp_path / "other.txt").write_text("ZZZZ yyyy 0123456789 ~~~~ " * 400)
    fill = {"file": tmp_path / "file.txt", "text": tmp_path / "other.txt", "run": trained_run, "tmp": tmp_path,
            "runs": trained_run.parent}
    args = [a.format(**fill) for a in args]
    if args[0].endswith(".py"):
        args = [str(ROOT / args[0]), *args[1:]]
    before = sorted(p.name for p in (trained_run / "checkpoints").iterdir())
    result = forked.run(args, tmp_path)
    assert result.returncode != 0
    assert re.search(message, result.stderr), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    if message.startswith("^error: "):  # ours: exactly one line and exit status 2
        assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == before  # nothing damaged
