"""A run's folder: new for each run, claimed by one live run at a time, never taken over from another
run, and written only once the run has claimed it, so a refused command changes nothing and leaves
no new folder behind.

Hydra writes nothing into it (conf/config.yaml sets `hydra.output_subdir: null` and gives train.log a
TrainLog handler): the run writes `.hydra/` and train.log itself once it holds the folder.
"""

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from logging.handlers import MemoryHandler
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from charlm.core.atomic import atomic_write
from charlm.core.errors import CharLMError, close_name, command_for
from charlm.core.sweep import in_sweep

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

RUN_FILES = (".hydra", "train.log", "summary.json", "checkpoints")  # what a run leaves in its folder
made_here: list[Path] = []  # folders this process created, deepest last: removed at exit if still empty


def make_folder(path: Path, exist_ok: bool = False) -> None:
    """mkdir -p that remembers which levels it created."""
    path = Path(path).absolute()
    new_levels = [p for p in [path, *path.parents] if not p.exists()]
    path.mkdir(parents=True, exist_ok=exist_ok)
    made_here.extend(reversed(new_levels))


def new_folder(path: str) -> str:
    """`path`, or `path-2`, `path-3`, ...: the first that does not exist yet, created at once, so two
    runs started in the same second with the same name never share a folder."""
    candidate, number = Path(path), 1
    while True:
        try:
            make_folder(candidate)  # atomic: exactly one process creates a given folder
            return str(candidate)
        except FileExistsError:
            number += 1
            candidate = Path(f"{path}-{number}")
        except OSError:  # cannot be created here: CheckOutputFolder says why, in one line
            return path


def remove_unused_folders() -> None:
    """Remove the folders this process created and nothing was written into (a refused run's, or the
    new folder of a run that resumed in its own), and a sweep job's folder left empty."""
    if in_sweep():
        made_here.append(Path(HydraConfig.get().runtime.output_dir))
    while made_here:
        with contextlib.suppress(OSError):  # not empty, or gone: keep it
            made_here.pop().rmdir()


def requeue_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint Lightning saved in this run folder on SLURM's requeue signal (SIGUSR1 with
    `#SBATCH --signal`): hpc_ckpt_<n>.ckpt. A requeued job with the same run folder resumes from it."""
    saved = sorted(Path(run_dir).glob("hpc_ckpt_*.ckpt"), key=lambda p: int(p.stem.rpartition("_")[2] or 0))
    return saved[-1] if saved else None


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES) or requeue_checkpoint(folder) is not None


def newest_run(runs_dir: Path, holding: str = "checkpoints") -> Path:
    """The most recently changed run folder under `runs_dir` (<paths.root>/runs) that holds `holding`."""
    runs_dir = Path(runs_dir)
    runs = sorted((p for p in runs_dir.glob("*") if (p / holding).exists()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise CharLMError(f"no run under {runs_dir} has {holding}; train one with `{command_for('train')}` or name it")
    return runs[-1]


def best_checkpoint(folder: Path) -> Path | None:
    """The newest best*.ckpt in a run's checkpoints folder, if there is one."""
    best = sorted(Path(folder).glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
    return best[-1] if best else None


def saved_checkpoint(folder: Path) -> Path | None:
    """A run's checkpoint to use: its best (newest best*.ckpt), else its last.ckpt; None if it has neither."""
    last = Path(folder) / "last.ckpt"
    return best_checkpoint(folder) or (last if last.is_file() else None)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or the best checkpoint of a run folder (else its last.ckpt)."""
    path = Path(path).expanduser()
    if not path.exists():
        hint = f" (did you mean {path.parent / match}?)" if (match := close_name(path)) else ""
        raise CharLMError(f"checkpoint not found: {path}{hint}")
    if path.is_file():
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if saved := saved_checkpoint(folder):
        return saved
    if runs := sorted(str(run) for run in folder.iterdir() if (run / "checkpoints").is_dir()):  # a sweep's folder
        more = f", ... {len(runs)} in all" if len(runs) > 1 else ""
        raise CharLMError(f"{folder} holds runs, not a checkpoint: give one of them ({runs[0]}{more}), or "
                          "-m ckpt=RUN_A,RUN_B for several")
    training = f": its run (pid {pid}) is still training, and saves one at its first validation" \
        if (pid := training_pid(folder.parent if folder.name == "checkpoints" else folder)) else ""
    raise CharLMError(f"no checkpoint (best*.ckpt or last.ckpt) in {folder}{training}")


def training_pid(run_dir: Path) -> int | None:
    """The process of the live run that holds this folder: the pid its lock file records, if that process
    is alive (checked without touching the lock, which a run starting now might be taking)."""
    if os.name == "nt":  # Windows's os.kill ends the process whatever the signal
        return None
    try:
        pid = int((run_dir / ".lock").read_text().strip())
        os.kill(pid, 0)  # signal 0: only whether the process exists
    except (OSError, ValueError):  # no lock file, an empty one, or a process that has ended
        return None
    return pid


def resume_file(ckpt_path: str, runs_dir: Path) -> Path:
    """`last` (the newest run's last.ckpt), a run folder (its last.ckpt) or a checkpoint file."""
    path = newest_run(runs_dir, "checkpoints/last.ckpt") if ckpt_path == "last" else Path(ckpt_path).expanduser()
    last = path / "checkpoints" / "last.ckpt"
    return last if last.is_file() else find_checkpoint(path)


def run_folder_of(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint belongs to (<run>/checkpoints/x.ckpt), if it is laid out so."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def launched_rank() -> int:
    """This process's rank as its launcher (torchrun, Lightning's DDP, SLURM) set it, read from the
    variables Lightning reads, before Lightning is imported; 0 when none is set."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def check_free(folder: Path, resuming: bool) -> None:
    """Refuse at once what hold_run_folder will refuse (it checks again, holding the lock): a folder a live
    run holds, or one holding another run when this one does not resume it."""
    folder = Path(folder)
    if (folder / ".lock").exists():
        with open(folder / ".lock", "a+") as lock:  # closing it lets the lock go
            lock_or_refuse(lock, folder)
    if not resuming and holds_run(folder):
        raise taken(folder)


def taken(folder: Path) -> CharLMError:
    """The error for a new run pointed at a folder holding another run."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
        what = f"a {summary['status']} run ({summary['steps']} steps)"
    except (OSError, ValueError, KeyError, TypeError):
        what = "an interrupted run"
    return CharLMError(f"{folder} holds {what}: resume it with ckpt_path={folder} (and a larger max_steps: it "
                       "takes the arguments it was started with), or leave out hydra.run.dir and this run gets a new "
                       "folder")


@contextlib.contextmanager
def hold_run_folder(folder: Path, resuming: bool = False, cfg: DictConfig | None = None) -> Iterator[None]:
    """Hold an exclusive lock on <folder>/.lock while a run writes there, and record the run's config and
    log in it. A folder held by a live run, or one holding another run when this one is not resuming it,
    is refused before anything in it changes."""
    folder = Path(folder)
    if not resuming and holds_run(folder) and not (folder / ".lock").exists():
        raise taken(folder)
    make_folder(folder, exist_ok=True)
    with open(folder / ".lock", "a+") as lock:  # opening changes nothing in an existing lock file
        lock_or_refuse(lock, folder)
        try:
            if not resuming and holds_run(folder):
                raise taken(folder)
            lock.seek(0)
            lock.truncate()
            lock.write(str(os.getpid()))
            lock.flush()
            for stale in [*folder.glob(".*.tmp"), *folder.glob("checkpoints/.*.tmp")]:
                stale.unlink(missing_ok=True)  # left by a write that was killed: no live run holds the folder now
            if cfg is not None:
                record_config(folder, cfg)
            write_train_log(folder)
            yield
        finally:
            lock.seek(0)
            lock.truncate()  # no pid: the run is over, also while its process goes on (a sweep's next job)
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def one_writer_at_a_time(folder: Path) -> Iterator[None]:
    """Wait for an exclusive lock on the folder itself (no lock file), so that processes rewriting the same
    files in it take turns. Where it cannot be locked (Windows, some network file systems): no wait."""
    if fcntl is None:
        yield
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


def lock_or_refuse(lock, folder: Path) -> None:
    """Take the run folder's lock, or refuse: a live run holds it."""
    if fcntl is None:  # Windows: run folders are not locked
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        raise CharLMError(f"{folder} is in use by a live run (pid {holder}); wait for it to end, or give this "
                          "run its own folder") from None


def record_config(folder: Path, cfg: DictConfig) -> None:
    """What Hydra would have written into the run folder: .hydra/config.yaml (the composed config),
    hydra.yaml and overrides.yaml (what was typed)."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    saved = {"config.yaml": cfg, "hydra.yaml": OmegaConf.create({"hydra": hydra_cfg}),
             "overrides.yaml": OmegaConf.create(list(hydra_cfg.overrides.task))}
    (folder / ".hydra").mkdir(exist_ok=True)
    for name, config in saved.items():
        text = OmegaConf.to_yaml(config, resolve=False).encode()
        atomic_write(folder / ".hydra" / name, lambda file, text=text: file.write(text))


class TrainLog(MemoryHandler):
    """train.log's handler (Hydra's job_logging names it): it holds the run's messages until the run has
    claimed its folder, then writes them and every later one to <folder>/train.log. A refused run's
    messages go nowhere but the console."""

    def __init__(self):
        super().__init__(capacity=0)

    def shouldFlush(self, record) -> bool:
        return self.target is not None

    def close(self) -> None:
        """Flush and keep the target: a library's logging.config call closes every handler mid-run
        (charlm.training.trackers.store_setup_undone puts this one back), and the file reopens to append."""
        self.flush()
        logging.Handler.close(self)


def write_train_log(folder: Path) -> None:
    """Start writing the run's log (what it printed so far included) to <folder>/train.log, appending."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, TrainLog) and handler.target is None:
            file = logging.FileHandler(Path(folder) / "train.log", encoding="utf-8")
            file.setFormatter(handler.formatter)
            handler.setTarget(file)
            handler.flush()
