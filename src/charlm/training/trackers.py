"""Where a run's curves, settings, results and samples go: TensorBoard (default), a CSV file, MLflow or
Weights & Biases, through Lightning's own loggers; several at once with logger=[tensorboard,mlflow].
MLflow and W&B are the [tracking] extra; a resumed run continues the same MLflow and W&B run."""

import contextlib
import importlib.util
import json
import logging
import math
import netrc
import os
import shlex
import urllib.error
import urllib.request
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig

from charlm.core.atomic import atomic_write
from charlm.core.errors import CharLMError
from charlm.core.sweep import as_dict, in_sweep, label, swept_keys
from charlm.training.internals import drop_wandb_anonymous

NEEDS = {"mlflow": "mlflow", "wandb": "wandb"}  # logger option -> the package it needs
IDS_FILE = "trackers.json"  # in the run folder: the MLflow and W&B run ids, for a resume to continue


def check_trackers(cfg: DictConfig) -> None:
    """A tracker whose package is missing, or an MLflow server that does not answer, fails before the run
    starts, in one line (MLflow's own client retries an absent server for minutes)."""
    for name in cfg.logger or {}:
        package = NEEDS.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise CharLMError(f"logger={name} needs the {package} package: pip install -e '.[tracking]' "
                              f"(or pip install {package})")
    uri = str((cfg.logger or {}).get("mlflow", {}).get("tracking_uri") or "")
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10).close()
        except urllib.error.HTTPError:
            pass  # a server answers: MLflow itself says what it thinks of it
        except (urllib.error.URLError, OSError) as err:
            why = getattr(err, "reason", None) or err
            raise CharLMError(f"logger.mlflow.tracking_uri={uri}: no server answers there ({why}); start one "
                              "(mlflow server), or leave tracking_uri out for a SQLite store under paths.root"
                              ) from None


def build_loggers(cfg: DictConfig) -> list[Logger]:
    return [instantiate(node) for node in (cfg.logger or {}).values()]


def sweep_name() -> str | None:
    """The sweep's folder name inside a sweep: its jobs' shared MLflow experiment and W&B group."""
    if in_sweep():
        return Path(HydraConfig.get().sweep.dir).name
    return None


def run_name(run_dir: str) -> str:
    """A run's name in a tracker: in a sweep, the values of what it varies (`model=cnn`); else its folder's."""
    if sweep_name():
        hydra = HydraConfig.get()
        swept = swept_keys(Path(hydra.sweep.dir), hydra.sweeper.get("params"))
        if name := label(swept, as_dict(hydra.overrides.task)):
            return name
    return Path(run_dir).name


def remembered(run_dir: str, tracker: str) -> str | None:
    try:
        return json.loads((Path(run_dir) / IDS_FILE).read_text()).get(tracker)
    except (OSError, ValueError, AttributeError):
        return None


def remember_runs(run_dir: Path, loggers: list[Logger]) -> None:
    """Record the trackers' run ids in the run folder (this starts their runs)."""
    ids = {}
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            ids["mlflow"] = logger.run_id
        elif isinstance(logger, WandbLogger):
            ids["wandb"] = logger.experiment.id
    if ids:
        atomic_write(Path(run_dir) / IDS_FILE, lambda file: file.write(json.dumps(ids).encode()))


def local_store(root: str) -> str:
    """MLflow's default store: a SQLite database under the output root."""
    return f"sqlite:///{Path(root).expanduser().absolute() / 'mlflow.db'}"


def local_artifacts(root: str) -> Path:
    """Where the default store's experiments keep their artifacts (text samples): under the output root."""
    return Path(root).expanduser().absolute() / "mlartifacts"


def mlflow_logger(save_dir: str, tracking_uri: str | None, experiment_name: str | None, root: str) -> MLFlowLogger:
    """MLflow's logger; by default against a SQLite store under the output root, which needs no server."""
    local = tracking_uri is None
    if local:
        local_artifacts(root).parent.mkdir(parents=True, exist_ok=True)
    with store_setup_undone():  # the store is set up as the logger connects
        return MLFlowLogger(experiment_name=experiment_name or sweep_name() or "runs", run_name=run_name(save_dir),
                            tracking_uri=local_store(root) if local else tracking_uri,
                            artifact_location=local_artifacts(root).as_uri() if local else None,
                            run_id=remembered(save_dir, "mlflow"))


@contextlib.contextmanager
def store_setup_undone():
    """What setting up a new SQLite store does to this process, undone. Alembic's logging.config.fileConfig
    closes the root logger's handlers and puts a console handler of its own in their place (train.log
    stopped there): the run's handlers go back. Its INFO lines (some 40 migration steps) stay off the
    console. And the store makes ./mlruns, its default artifact root, in the working directory, though
    every experiment here keeps its artifacts under the output root: removed if new and empty."""
    root, stray = logging.getLogger(), Path("mlruns")
    handlers, level, disabled, stray_existed = root.handlers[:], root.level, root.manager.disable, stray.exists()
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(disabled)
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        if not stray_existed:
            with contextlib.suppress(OSError):
                stray.rmdir()


def logged_in_to_wandb() -> bool:
    """An API key is at hand (environment or ~/.netrc), found without asking the network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_logger(save_dir: str, project: str, group: str | None, mode: str | None) -> WandbLogger:
    """W&B's logger: offline unless logged in (or mode, or WANDB_MODE, says otherwise)."""
    if mode is None and "WANDB_MODE" not in os.environ:
        mode = "online" if logged_in_to_wandb() else "offline"
    run_id = remembered(save_dir, "wandb")
    logger = WandbLogger(project=project, name=run_name(save_dir), group=group or sweep_name(), save_dir=save_dir,
                         id=run_id, resume="allow" if run_id else None, mode=mode)
    drop_wandb_anonymous(logger)
    return logger


def tracker_commands(cfg: DictConfig) -> list[str]:
    """How to look at the run in a tracker that needs a command to start: MLflow's local store (with its
    artifact root, or `mlflow ui` makes an empty ./mlruns, its default one, wherever it is started)."""
    mlflow = (cfg.logger or {}).get("mlflow")
    if mlflow is None or mlflow.tracking_uri is not None:
        return []
    return [f"  mlflow ui --backend-store-uri {shlex.quote(local_store(mlflow.root))} "
            f"--default-artifact-root {shlex.quote(str(local_artifacts(mlflow.root)))}"]


def log_text(loggers: list[Logger], text: str, step: int) -> None:
    """A text sample, where each tracker keeps text (CSV has no place for it)."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            # Indented lines render as a code block in TensorBoard, which keeps line breaks.
            markdown = "\n".join("    " + line for line in text.splitlines())
            logger.experiment.add_text("sample", markdown, step)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_text(logger.run_id, text, f"samples/step_{step:06d}.txt")
        elif isinstance(logger, WandbLogger):
            logger.log_text("samples", columns=["step", "text"], data=[[step, text]])


def log_results(loggers: list[Logger], settings: dict, results: dict, step: int) -> None:
    """The run's flat settings and final results: TensorBoard's HParams entry; the others' params and metrics."""
    finite = {k: v for k, v in results.items() if math.isfinite(v)}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(settings, {f"hparams/{k}": v for k, v in finite.items()})
            logger.experiment.close()  # the run's event file is complete
            continue
        if isinstance(logger, MLFlowLogger):  # a param keeps its first value: a resume may not change it
            settings = {k: v for k, v in settings.items()
                        if k not in logger.experiment.get_run(logger.run_id).data.params}
        logger.log_hyperparams(settings)
        logger.log_metrics(finite, step=step)
        logger.save()
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()
