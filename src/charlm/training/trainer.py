"""The Lightning Trainer as this project builds it: atomic checkpoint writes, a no-op profiler that
costs less than Lightning's own, and quiet logs."""

import contextlib
import logging
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.profilers import PassThroughProfiler
from omegaconf import DictConfig

from charlm.core.atomic import atomic_write

# Lightning chatter that says nothing about this run.
NOISE = ("💡 Tip", "Trainer already configured with model summary")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not record.getMessage().startswith(NOISE)
)


def quiet_warnings() -> None:
    """Leave out Lightning's warnings that do not apply here. Set again for each trainer: a caller's
    warnings.catch_warnings() (pytest's around each test) drops the filters added inside it."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # num_workers=0 is deliberate (conf/data): a batch is one indexing op, and workers only add overhead.
    warnings.filterwarnings("ignore", message=r".*does not have many workers")
    # Our sampler does resume mid-epoch: it starts at the restored step (CharDataModule.batches_done).
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
    # A resumed run saves into its own checkpoint folder; a new run refuses one holding another run
    # (charlm.core.run_folder.check_free).
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # Mixed precision keeps the weights in float32, so the summary's float32 size is the true one.
    warnings.filterwarnings("ignore", message=r"Precision (bf)?16-mixed is not supported by the model summary")


quiet_warnings()  # at import too: the ranks ddp_spawn starts import this module and build no trainer


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temp file beside the target, fsync, then rename: a crash never leaves half a file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), lambda file: torch.save(checkpoint, file))


class NoProfiler(PassThroughProfiler):
    """Times nothing, like Lightning's default profiler, but cheaper: Lightning wraps each of its ~50
    hook calls a step in profiler.profile(name), and the default builds a generator context manager
    every time; this returns one shared no-op context (docs/performance.md has the gain)."""

    _nothing = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return self._nothing


class RunLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger without the `epoch` chart it adds to every logged step (flat at 0
    here: a run is one epoch); the run's settings and results go to the HParams tab once, at its end
    (charlm.training.train.report_run), rather than the LightningModule's nested hyperparameters at its start."""

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)

    def log_hyperparams(self, params: dict, metrics: dict | None = None, step: int | None = None) -> None:
        """The run's HParams entry without an experiment summary of its own: with none, TensorBoard builds
        the HParams table from every run it shows, the settings that differ between them first and ticked
        (a sweep's report adds the sweep folder's, charlm.training.report.write_hparams_config)."""
        from torch.utils.tensorboard.summary import hparams

        self.log_metrics(metrics or {}, step)
        _, start, end = hparams(params, metrics or {})
        writer = self.experiment._get_file_writer()  # as Lightning's own log_hyperparams writes them
        writer.add_summary(start, step)
        writer.add_summary(end, step)

    def finalize(self, status: str) -> None:
        # Flushed, not closed: the HParams entry written after fit then lands in the same event file
        # (a resumed run's own file holds all it logged); report_run closes it.
        self.experiment.flush()
        self.save()


def build_trainer(cfg: DictConfig, **overrides) -> L.Trainer:
    """The configured Trainer; `trainer.profiler=simple` (or advanced) times Lightning's hooks."""
    quiet_warnings()
    return instantiate(cfg.trainer, profiler=cfg.trainer.get("profiler") or NoProfiler(),
                       plugins=[AtomicCheckpointIO()], **overrides)
