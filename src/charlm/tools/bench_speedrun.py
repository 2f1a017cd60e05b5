"""The speed-run benchmark (`python -m charlm bench speedrun`): wall time to a validation loss, the
figure users feel. Each case is a real `train.py` run in its own process; a callback records, at every
validation, the loss, the training seconds so far (validation excluded) and the validation seconds so
far. For each threshold the table gives the training time to the first validation at or below it, and
the time from launching the process to that validation's result; then the whole process's time.

With `--nanogpt DIR` (a checkout of github.com/karpathy/nanoGPT) its own train.py runs first, on the
same text and machine, and its final validation loss joins the thresholds."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning as L

from charlm.core.corpus import resolve_path
from charlm.core.errors import CharLMError

THRESHOLDS = [1.884, 1.70, 1.60]
# nanoGPT's 0.2M character model on the CPU, as its README's CPU example runs it, at this project's
# gpt_0.2m_published shape and budget: 4 x 64, block 32, batch 16, 5000 iterations, float32.
NANOGPT_ARGS = ("config/train_shakespeare_char.py --device=cpu --compile=False --dtype=float32 --n_layer=4 "
                "--n_head=4 --n_embd=64 --block_size=32 --batch_size=16 --max_iters=5000 --lr_decay_iters=5000 "
                "--dropout=0.0")


class ValidationClock(L.Callback):
    """Appends one JSON line per validation to `path`: step, val/loss, the training seconds so far, the
    validation seconds so far (the sanity check, the validations, and what follows them before the
    next step: text samples, checkpoints), and the wall-clock time (time.time()) the loss was known."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.sanity_s = self.validation_s = 0.0  # before training starts; after it
        self.train_start: float | None = None
        self.paused = 0.0
        self.pending: dict | None = None

    def on_train_start(self, trainer: L.Trainer, *args) -> None:
        self.train_start = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, *args) -> None:
        self.paused = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, *args) -> None:
        if self.train_start is None:  # the sanity check
            self.sanity_s += time.perf_counter() - self.paused
            return
        if not trainer.is_global_zero:
            return
        self.pending = {"step": trainer.global_step, "val_loss": float(trainer.callback_metrics["val/loss"]),
                        "train_s": self.paused - self.train_start - self.validation_s, "time": time.time()}

    def resume(self) -> None:
        """Training goes on, or ends: the validation that paused it is over."""
        if self.pending is None:
            return
        self.validation_s += time.perf_counter() - self.paused
        with open(self.path, "a") as file:
            file.write(json.dumps({**self.pending, "validation_s": self.sanity_s + self.validation_s}) + "\n")
        self.pending = None

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        self.resume()

    def on_train_end(self, trainer: L.Trainer, *args) -> None:
        self.resume()


def launch(command: list[str], cwd: Path | None = None) -> tuple[float, float, list[tuple[float, str]]]:
    """Run a command to its end; returns its launch time (time.time()), its whole time in seconds, and
    its output lines, each with the time it arrived. A failure is one CharLMError with its last line."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.time()
    lines = []
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:
        for line in process.stdout:
            lines.append((time.time(), line.rstrip("\n")))
    if process.returncode != 0:
        last = lines[-1][1] if lines else ""
        raise CharLMError(f"{' '.join(command[:6])} ... failed (exit status {process.returncode}): {last}")
    return start, time.time() - start, lines


def timed_row(row: dict, records: list[dict], start: float, process_s: float, thresholds: list[float]) -> dict:
    """For each threshold: the training seconds to the first validation at or below it (where known)
    and the seconds from launch to that validation's result; then validation and whole-process time."""
    for threshold in thresholds:
        first = next((r for r in records if r["val_loss"] <= threshold), None)
        row[f"train_s_to_{threshold}"] = first["train_s"] if first and "train_s" in first else "-"
        row[f"process_s_to_{threshold}"] = first["time"] - start if first else "-"
    row["validation_s"] = records[-1]["validation_s"] if records and "validation_s" in records[-1] else "-"
    row["process_s"] = process_s
    return row


def case_folder(case: str, out_dir: Path) -> Path:
    """Where a case's run goes: under `out_dir`/runs, named after the case without "=" (Hydra would parse it)."""
    return out_dir / "runs" / re.sub(r"[^\w.-]+", "_", case)


def train_case(case: str, out_dir: Path, *extra: str) -> tuple[Path, dict, float, float]:
    """`train.py experiment=<preset> <overrides> <extra>` in its own process, in a fresh run folder under
    `out_dir`/runs: (the run folder, its summary.json, launch time, seconds)."""
    name, *overrides = case.split()
    run_dir = case_folder(case, out_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # this benchmark's own earlier result, which a new run may not reuse
    start, process_s, _ = launch([sys.executable, "-m", "charlm.commands", "train", f"experiment={name}", *overrides,
                                  *extra, f"hydra.run.dir={run_dir}"])
    return run_dir, json.loads((run_dir / "summary.json").read_text()), start, process_s


def run_case(case: str, out_dir: Path) -> tuple[dict, list[dict], float, float]:
    """`train.py experiment=<preset> <overrides>` in its own process: (row, validations, start, seconds)."""
    run_dir = case_folder(case, out_dir)
    clock = run_dir.with_name(f"{run_dir.name}.validations.jsonl")
    clock.unlink(missing_ok=True)
    _, summary, start, process_s = train_case(
        case, out_dir, "+callbacks.clock._target_=charlm.tools.bench_speedrun.ValidationClock",
        f"+callbacks.clock.path={clock}")
    records = [json.loads(line) for line in clock.read_text().splitlines()]
    row = {"run": case, "parameters": summary["parameters"], "steps": summary["steps"], "tokens": summary["tokens"],
           "best_val_loss": summary["best_val_loss"]}
    return row, records, start, process_s


def prepare_nanogpt(root: Path) -> None:
    """nanoGPT's shakespeare_char data from the Tiny Shakespeare shipped here (its prepare.py would
    download the same file)."""
    data = root / "data" / "shakespeare_char"
    if not (root / "train.py").is_file() or not (data / "prepare.py").is_file():
        raise CharLMError(f"--nanogpt {root}: not a nanoGPT checkout (no train.py and data/shakespeare_char)")
    shipped, text = resolve_path(None).read_bytes(), data / "input.txt"
    if text.is_file() and text.read_bytes() != shipped:
        raise CharLMError(f"{text} is not Tiny Shakespeare as shipped here; remove it to have it replaced")
    if not text.is_file():
        text.write_bytes(shipped)
    if not (data / "train.bin").is_file() or not (data / "meta.pkl").is_file():
        launch([sys.executable, "prepare.py"], cwd=data)


def run_nanogpt(root: Path, args: str, out_dir: Path) -> tuple[dict, list[dict], float, float]:
    """nanoGPT's own train.py (its data prepared: prepare_nanogpt), its "step N: train loss X, val loss Y"
    lines timed as they arrive; its evaluations are inside its loop, so only process times are known."""
    start, process_s, lines = launch([sys.executable, "train.py", *args.split(), f"--out_dir={out_dir / 'nanogpt'}"],
                                     cwd=root)
    pattern = re.compile(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)")
    records = [{"step": int(m[1]), "val_loss": float(m[2]), "time": arrived}
               for arrived, line in lines if (m := pattern.search(line))]
    if not records:
        raise CharLMError("nanoGPT printed no validation loss")
    parameters = next((line.split(":", 1)[1].strip() for _, line in lines if "number of parameters" in line), "-")
    # nanoGPT's loss is its own estimate: the mean over 200 random batches of the validation split
    label = "nanoGPT train.py (0.2M, 5000 iterations)" if args == NANOGPT_ARGS else f"nanoGPT {args}"
    row = {"run": label, "parameters": parameters, "steps": records[-1]["step"], "tokens": "-",
           "best_val_loss": min(r["val_loss"] for r in records)}
    return row, records, start, process_s


def bench_speedrun(cases: list[str], thresholds: list[float], nanogpt: Path | None, nanogpt_args: str,
                   out_dir: Path, print_row) -> list[dict]:
    if nanogpt is not None:
        prepare_nanogpt(nanogpt)  # a folder that is no nanoGPT checkout is refused before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    if nanogpt is not None:
        row, records, start, process_s = run_nanogpt(nanogpt, nanogpt_args, out_dir)
        final = records[-1]["val_loss"]  # as nanoGPT prints it, to 4 decimals
        thresholds = sorted({*thresholds, final}, reverse=True)  # how soon each case reaches nanoGPT's final loss
        rows.append(timed_row(row, records, start, process_s, thresholds))
        print_row(rows[-1])
    for case in cases:
        rows.append(timed_row(*run_case(case, out_dir), thresholds))
        print_row(rows[-1])
    return rows
