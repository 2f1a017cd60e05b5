"""Compare runs: a Markdown and CSV table plus a validation-loss plot for every run under a folder.

    charlm report outputs/multirun/<sweep>      # any folder of runs (or python -m charlm report)

After a sweep, the Hydra callback `SweepReport` (conf/config.yaml) writes the same report into the
sweep folder as each job ends, so it exists even when a job fails.
"""

import argparse
import csv
import io
import json
import math
import sys
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf

from charlm.core.atomic import atomic_write, ensure_writable
from charlm.core.cli import run_cli
from charlm.core.errors import CharLMError
from charlm.core.run_folder import one_writer_at_a_time, training_pid
from charlm.core.sweep import as_dict, differing_keys, label, setting_key, swept_keys

# (summary key, column title, format for the Markdown table)
COLUMNS = [
    ("run", "run", "{}"), ("folder", "folder", "{}"), ("model", "model", "{}"), ("parameters", "parameters", "{:,}"),
    ("steps", "steps", "{:,}"), ("tokens", "tokens", "{:,}"), ("best_val_loss", "best val loss", "{:.4f}"),
    ("best_val_bpc", "val bpc", "{:.3f}"), ("tokens_per_s", "tokens/s", "{:,.0f}"),
    ("wall_time_s", "wall time (s)", "{:.1f}"), ("status", "status", "{}"),
]


def find_runs(folder: Path) -> list[Path]:
    """Run folders: every folder below `folder` (or itself) holding a Hydra config."""
    return sorted(p.parent.parent for p in folder.glob("**/.hydra/config.yaml"))


def validation_curve(run: Path) -> list[tuple[int, float]]:
    # tensorboard and matplotlib load only when a report is written: every train.py run loads this
    # module, because SweepReport is a Hydra callback.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not (run / "tb").is_dir():  # logger=csv, or a run that failed before logging anything
        return csv_curve(run / "csv" / "metrics.csv")
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    if "val/loss" not in events.Tags().get("scalars", []):
        return []
    return [(e.step + 1, e.value) for e in events.Scalars("val/loss")]  # logged at step index, 0-based


def csv_curve(metrics: Path) -> list[tuple[int, float]]:
    """The validation curve in the file of Lightning's CSV logger (logger=csv); [] where there is none."""
    try:
        with metrics.open(newline="") as file:
            rows = [row for row in csv.DictReader(file) if row.get("val/loss")]
        return [(int(row["step"]) + 1, float(row["val/loss"])) for row in rows]
    except (OSError, KeyError, ValueError):  # no such file, or not the CSV logger's
        return []


def run_overrides(run: Path) -> dict[str, str]:
    try:
        return as_dict(OmegaConf.load(run / ".hydra" / "overrides.yaml"))
    except Exception:  # no overrides.yaml, or not a list of overrides
        return {}


def run_row(run: Path, root: Path) -> dict:
    summary_file = run / "summary.json"
    row = {"folder": str(run.relative_to(root)) if run != root else run.name}
    if not summary_file.is_file():
        row["status"] = "failed or unfinished"
    else:
        try:
            row |= json.loads(summary_file.read_text())
        except (OSError, ValueError):  # half-written by a run killed mid-write, or not ours: report the others
            row["status"] = f"unreadable summary.json ({summary_file})"
    if pid := training_pid(run):  # still training (a resumed run's summary.json holds its earlier calls)
        row["status"] = f"running (pid {pid})"
    return row


def fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return spec.format(value)


def write_report(folder: str | Path) -> list[Path]:
    """Write report.md, report.csv and val_loss.png into `folder`; returns their paths."""
    root = Path(folder)
    if not root.is_dir():
        raise CharLMError(f"not a folder of runs: {root}")
    # A parallel sweep's jobs each rewrite the report as they end: in turn, so the last one written
    # holds every job that had ended (a report read before a job's summary, written after, would not).
    with one_writer_at_a_time(root):
        runs = find_runs(root)
        if not runs:
            raise CharLMError(f"no runs (folders with .hydra/config.yaml) under {root}")
        ensure_writable(root)
        rows = [run_row(run, root) for run in runs]
        overrides = [run_overrides(run) for run in runs]
        varied = swept_keys(root) or differing_keys(overrides)  # what tells the runs apart: their names
        for row, given in zip(rows, overrides, strict=True):
            row["run"] = label(varied, given) or row["folder"]
        write_hparams_config(root, rows, varied)

        header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
        lines = [header, "|" + " --- |" * len(COLUMNS)]
        lines += ["| " + " | ".join(fmt(row.get(key), spec) for key, _, spec in COLUMNS) + " |" for row in rows]
        # Each file replaced whole (a second Ctrl-C often lands in a sweep's last report): never half of one
        markdown = root / "report.md"
        text = f"# Runs under {root}\n\n" + "\n".join(lines) + "\n"
        atomic_write(markdown, lambda file: file.write(text.encode()))

        table, csv_text = root / "report.csv", io.StringIO()
        writer = csv.DictWriter(csv_text, fieldnames=[key for key, _, _ in COLUMNS], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(table, lambda file: file.write(csv_text.getvalue().encode()))

        curves = [(row["run"], curve) for run, row in zip(runs, rows, strict=True) if (curve := validation_curve(run))]
        if not curves:  # the runs logged to neither TensorBoard nor CSV: nothing to draw
            return [markdown, table]
        plot = root / "val_loss.png"
        import matplotlib  # see validation_curve: loaded only here

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, curve in curves:
            steps, losses = zip(*curve, strict=True)
            ax.plot(steps, losses, marker="o", markersize=3, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss (nats/char)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
        atomic_write(plot, lambda file: fig.savefig(file, format="png", dpi=120, bbox_inches="tight"))
        plt.close(fig)
        return [markdown, table, plot]


def write_hparams_config(root: Path, rows: list[dict], varied: list[str]) -> None:
    """TensorBoard's HParams experiment for the runs under `root`: every setting, those in `varied` marked
    as differing, which TensorBoard puts first and ticks (it orders the rest by name). An event file in
    `root`, replaced each time."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.plugins.hparams import plugin_data_pb2  # see validation_curve
    from tensorboard.plugins.hparams import summary_v2 as hp
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    known = {key: None for row in rows for key in row.get("settings") or {}}
    if not known:
        return
    first = [setting_key(key, known) for key in varied]
    names = [*dict.fromkeys(first), *sorted(set(known) - set(first))]  # the order other readers see
    metrics = [hp.Metric(f"hparams/{key}") for key in ("best_val_loss", "best_val_bpc", "parameters", "tokens_per_s")]
    for old in root.glob("events.out.tfevents.*"):
        old.unlink()
    writer = EventFileWriter(str(root))
    config = hp.hparams_config_pb([hp.HParam(name) for name in names], metrics)
    content = config.value[0].metadata.plugin_data
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content.content)
    for info in experiment.experiment.hparam_infos:
        info.differs = info.name in first
    content.content = experiment.SerializeToString()
    writer.add_event(Event(wall_time=time.time(), summary=config))
    writer.close()


class SweepReport(Callback):
    """Hydra callback: refresh the sweep folder's report whenever a job of a sweep ends."""

    def on_job_end(self, config, job_return, **kwargs) -> None:
        hydra = HydraConfig.get()
        if hydra.mode == RunMode.MULTIRUN:
            try:
                write_report(hydra.sweep.dir)
            except CharLMError:
                pass  # a job that failed before writing anything leaves nothing to report yet


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="charlm report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a folder of runs: a sweep's, outputs/runs, or any other")
    folder = parser.parse_args(argv).folder
    for path in write_report(folder):
        print(path)
    print((Path(folder) / "report.md").read_text())


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
