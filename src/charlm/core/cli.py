"""What the entry points share: config resolvers, and user errors printed as one line."""

import atexit
import contextlib
import functools
import gc
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from hydra.errors import HydraException, InstantiationException, MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from charlm.core.atomic import ensure_writable
from charlm.core.errors import CharLMError, Interrupted, log
from charlm.core.internals import skip_unused_help_lists
from charlm.core.model_config import MODEL_CONFIGS
from charlm.core.run_config import config_groups, group_help, knob_help, register_schemas
from charlm.core.run_folder import holds_run, make_folder, new_folder, remove_unused_folders
from charlm.core.sweep import in_sweep, job_folder_name, override_key


def prepare_hydra() -> None:
    """The resolvers the configs use, the schemas they are presets over, and a faster `--help`."""
    register_schemas()
    skip_unused_help_lists()
    OmegaConf.register_new_resolver("knob_help", knob_help, replace=True)
    OmegaConf.register_new_resolver("group_help", group_help, replace=True)
    OmegaConf.register_new_resolver("min", min, replace=True)
    # cached: Hydra resolves the run folder more than once, and each time must name the same folder
    OmegaConf.register_new_resolver("new_folder", new_folder, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("sweep_job", job_folder_name, replace=True)
    OmegaConf.register_new_resolver("scratch_folder", scratch_folder, replace=True, use_cache=True)


def scratch_folder() -> str:
    """A temporary folder, removed when the process ends: where Hydra records a sweep (-m) of sample.py,
    evaluate.py or charlm attention, which leave no files behind."""
    folder = tempfile.mkdtemp(prefix="charlm-sweep-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def one_line(err: BaseException) -> str:
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def is_lightning_config_error(err: BaseException) -> bool:
    """Lightning's MisconfigurationException, recognised without importing Lightning (sample.py never does)."""
    return any(cls.__name__ == "MisconfigurationException" and cls.__module__.startswith("lightning")
               for cls in type(err).__mro__)


def user_error(err: BaseException) -> BaseException | None:
    """The error a user should see, or None for a bug. Hydra wraps errors raised while it builds an
    object ("Error in call to target ..."): the user's error is the one inside where it is one, else
    Hydra's, which names the object the config could not build (`+trainer.foo=1`)."""
    built = err if isinstance(err, InstantiationException) else None
    while isinstance(err, InstantiationException) and isinstance(err.__cause__, Exception):
        err = err.__cause__
    if isinstance(err, CharLMError) or is_lightning_config_error(err):
        return err
    if isinstance(err, OSError) and err.strerror:  # a file or folder the user named or can fix
        return CharLMError(f"{err.strerror}: {err.filename}" if err.filename else err.strerror)
    return built


@functools.cache
def skip_final_collections() -> None:
    """At exit, after the atexit handlers registered later (loggers, trackers, temporary folders) have run,
    freeze every object left, so the interpreter's final garbage collections skip them: with torch and
    Lightning loaded those walk some 400,000 objects for over a second (docs/performance.md), only to
    free memory that the process's exit frees anyway."""
    atexit.register(gc.freeze)


def run_cli(task: Callable, *args):
    """Run an entry point's task: the one place that turns what can go wrong into a line and an exit status.

    A user error (CharLMError, Lightning's configuration errors, Hydra's instantiation errors, a file
    that cannot be read or written) prints `error: ...` and exits with status 2; a run stopped by a
    signal after saving exits 128 + the signal (130 for Ctrl-C, 143 for SIGTERM). Inside a Hydra sweep a
    user error is raised on after its line: Hydra then marks that job failed and runs the others.
    Set CHARLM_DEBUG=1 to get the full traceback instead.
    """
    debug = bool(os.environ.get("CHARLM_DEBUG"))
    skip_final_collections()
    try:
        return task(*args)
    except Interrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr, flush=True)
        log.warning(f"interrupted: {stop}")
        sys.exit(stop.exit_code)
    except BrokenPipeError:  # the reader stopped reading (`sample.py | head`): nothing went wrong here
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit cannot fail again
        sys.exit(0)
    except KeyboardInterrupt:  # Ctrl-C where nothing was running that could save
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGINT)
    except Exception as err:
        shown = None if debug else user_error(err)
        if shown is None:
            raise
        print(f"error: {one_line(shown)}", file=sys.stderr, flush=True)
        log.error(one_line(shown))  # into train.log too, where there is one
        if in_sweep():
            raise
        sys.exit(2)
    finally:
        remove_unused_folders()


# Hydra plugins that the package's extras install (pyproject.toml): the config each adds, and its extra.
PLUGIN_EXTRAS = {"hydra/launcher/joblib": "parallel", "hydra/launcher/submitit_slurm": "slurm",
                 "hydra/launcher/submitit_local": "slurm", "hydra/sweeper/optuna": "search"}


def config_error(err: BaseException) -> str:
    """An error in composing the config (an unknown key, a value of the wrong type, a bad override), as
    one line naming the key."""
    if isinstance(err, OverrideParseException) and "=" not in err.override.lstrip("~"):  # `prompt=To be`
        return (f"{err.override!r} is not key=value: each option is one key=value argument (a value with spaces "
                "goes in quotes: key=\"a b\")")
    if isinstance(err, MissingConfigException) and err.options is not None:  # group=option with no such option
        options = [o for o in err.options if not o.endswith("schema")]
        missing = re.search(r"Could not find '([^']+)'", str(err))
        extra = PLUGIN_EXTRAS.get(missing[1]) if missing else None
        install = f"; it comes with pip install -e \".[{extra}]\"" if extra else ""
        return f"{str(err).splitlines()[0]}{install}; choose one of: {', '.join(options)}"
    inner = err.__cause__ or err.__context__  # Hydra's composition errors keep the key's error as context
    cause = inner if isinstance(inner, OmegaConfBaseException) else err
    key = getattr(cause, "full_key", None)
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key:
        group, _, leaf = key.partition(".")
        owners = [f"model={family}" for family, settings in MODEL_CONFIGS.items()
                  if group == "model" and leaf in {spec.name for spec in fields(settings)}]
        preset = re.match(r"In '(experiment/[^']+)'", str(err))  # `experiment=gpt_0.2m model=cnn`
        if owners and preset:
            return (f"{key} applies to {' and '.join(owners)}, not to this run's model; {preset[1]} sets it: a "
                    "preset is made for its own model (choose one for this model, or leave out model=)")
        if owners:
            return f"{key} applies to {' and '.join(owners)}, not to this run's model"
        return f"{key} is not a setting (--help lists them; +{key}=VALUE adds a new key)"
    detail = str(getattr(cause, "msg", "")).splitlines()[:1] if cause is not err else []
    return ": ".join([one_line(err), *detail])


def check_groups(argv: list[str], needed: tuple[str, ...] = ()) -> None:
    """Refuse a config group set to null (Hydra answers with a traceback) and, of the `needed` groups (a
    run has one of each), one left out with ~GROUP (the run would fail later, less clearly)."""
    removed = [item for item in argv[1:] if item.startswith("~") or item.partition("=")[2] == "null"]
    groups = config_groups() if removed else {}  # conf/ is listed only when an argument could matter
    for item in removed:
        key, _, value = item.partition("=")
        group = key.lstrip("+~")
        options = ", ".join(groups.get(group, []))
        if group in needed and (value == "null" or key.startswith("~")):
            refuse(f"{item}: a run needs one {group} option; choose one of: {options}")
        if group in groups and value == "null":
            refuse(f"{item}: a config group takes one of its options ({options}), or ~{group} for none")


def hydra_main(main: Callable, taken: tuple[Path, list[str]] | None = None, needed: tuple[str, ...] = ()) -> None:
    """Run a Hydra main with its errors in composing the config as one line and exit status 2 (Hydra
    prints them over several lines with status 1). A job's own errors were printed by run_cli.
    `taken`: the file and arguments a resume took from its run (an error in one of them says where it is);
    `needed`: the config groups a run cannot leave out."""
    traceback_wanted = bool(os.environ.get("HYDRA_FULL_ERROR") or os.environ.get("CHARLM_DEBUG"))
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing
    check_groups(sys.argv, needed)
    try:
        main()
    except (HydraException, OmegaConfBaseException) as err:
        if traceback_wanted:
            raise
        message = config_error(err)
        if taken and any(override_key(item) in message for item in taken[1]):
            message += f" (an argument of the run, from {taken[0]})"
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Exception as err:
        if traceback_wanted or user_error(err) is None:
            raise
        sys.exit(2)  # a sweep's job failed; run_cli has printed its line


def refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def check_writable(folder: str) -> None:
    """Stop with one line, before Hydra itself trips over it, when `folder` cannot be written."""
    with contextlib.suppress(OSError):  # ensure_writable says why, in one line
        make_folder(Path(folder), exist_ok=True)  # remembered, so a refused run's new folder is removed
    try:
        ensure_writable(Path(folder))
    except CharLMError as err:
        refuse(str(err))


class CheckOutputFolder(Callback):
    """Hydra callback: fail with one line, before Hydra writes anything, when the run or sweep folder
    cannot be written, or a sweep would land among an earlier sweep's runs."""

    def on_run_start(self, config, **kwargs) -> None:
        check_writable(config.hydra.run.dir)

    def on_multirun_start(self, config, **kwargs) -> None:
        folder = Path(config.hydra.sweep.dir)
        if folder.is_dir() and any(holds_run(job) for job in folder.iterdir() if job.is_dir()):
            refuse(f"{folder} holds an earlier sweep's runs; leave out hydra.sweep.dir and this sweep gets a new "
                   "folder, or resume a job with ckpt_path=<its folder>")
        check_writable(str(folder))
