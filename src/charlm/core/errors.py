"""The one exception type for mistakes a user can fix (entry points print it as one line), the
interruption a run ends with, a one-line description of any other error, the likely meaning of a
mistyped path, the command that starts an entry point, and the "charlm" logger."""

import contextlib
import difflib
import itertools
import logging
import shlex
import sys
from pathlib import Path

# What charlm tells the user is also logged here; a Hydra job gives this logger the run's train.log.
# Without a handler (sample.py, tests), logging would print warnings and errors a second time.
log = logging.getLogger("charlm")
log.addHandler(logging.NullHandler())


SCRIPTS = ("train.py", "sample.py", "evaluate.py")  # the repository's scripts, side by side


def command_for(entry: str) -> str:
    """How to start an entry point (train, sample, evaluate) the way this process was started, ready to
    paste: the script beside the one that runs (`python sample.py`), else `charlm sample` (installed with
    the package, so it works outside the repository too)."""
    script = Path(sys.argv[0])
    if script.name in SCRIPTS and script.with_name(f"{entry}.py").is_file():
        return f"python {shlex.quote(str(script.with_name(f'{entry}.py')))}"
    return f"charlm {entry}"


class CharLMError(Exception):
    """A problem with the user's input (data, config, checkpoint, prompt), stated plainly."""


class Interrupted(Exception):
    """A run stopped by a signal after saving what it could; the entry point exits with `exit_code`
    (128 + the signal's number, as a shell reports a process a signal ended)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def describe_error(err: BaseException) -> str:
    """An exception's type and the first line of its message, for a one-line warning."""
    first_line = (str(err).strip().splitlines() or [""])[0][:200]
    return f"{type(err).__name__}: {first_line}" if first_line else type(err).__name__


def close_name(path: Path, extra: tuple[str, ...] = ()) -> str | None:
    """For a path that does not exist: the closest of `extra` and the names in its folder (at most 10,000
    of them, not a whole huge folder), if one is close enough to be a likely typo; else None."""
    names = list(extra)
    with contextlib.suppress(OSError):  # a folder that does not exist or cannot be listed: no names from it
        names += [entry.name for entry in itertools.islice(path.parent.iterdir(), 10_000)]
    match = difflib.get_close_matches(path.name, names, n=1, cutoff=0.8)
    return match[0] if match else None
