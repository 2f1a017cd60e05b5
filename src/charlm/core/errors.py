"""The one exception type for mistakes a user can fix (entry points print it as one line), the
interruption a run ends with, a one-line description of any other error, and the "charlm" logger."""

import logging

# What charlm tells the user is also logged here; a Hydra job gives this logger the run's train.log.
# Without a handler (sample.py, tests), logging would print warnings and errors a second time.
log = logging.getLogger("charlm")
log.addHandler(logging.NullHandler())


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
