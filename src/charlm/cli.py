"""What the entry points share: config resolvers, and user errors printed as one line."""

import os
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf

from charlm.errors import CharLMError


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("min", min, replace=True)


def one_line(err: BaseException) -> str:
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def run_cli(task: Callable, *args, user_errors: tuple[type[Exception], ...] = ()):
    """Run an entry point's task; a user error becomes `error: ...` on stderr and exit status 2.

    CharLMError and Hydra's instantiation errors are user errors, plus any `user_errors` the entry
    point adds. Set CHARLM_DEBUG=1 to get the full traceback instead. Inside a Hydra sweep the error
    is raised on after its line is printed: Hydra then marks that job failed and runs the others.
    """
    try:
        return task(*args)
    except (CharLMError, InstantiationException, *user_errors) as err:
        if os.environ.get("CHARLM_DEBUG"):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        sys.exit(2)


def check_writable(folder: str) -> None:
    """Create `folder` and write a probe file, or stop with one line saying why not."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        print(f"error: cannot write the output folder {path}: {err.strerror or err}", file=sys.stderr, flush=True)
        sys.exit(2)


class CheckOutputFolder(Callback):
    """Hydra callback: fail with one line, before Hydra itself trips over it, when the run or sweep
    folder cannot be written."""

    def on_run_start(self, config, **kwargs) -> None:
        check_writable(config.hydra.run.dir)

    def on_multirun_start(self, config, **kwargs) -> None:
        check_writable(config.hydra.sweep.dir)
