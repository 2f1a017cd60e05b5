"""The one exception type for mistakes a user can fix (entry points print it as one line), and a
one-line description of any other error, for warnings."""


class CharLMError(Exception):
    """A problem with the user's input (data, config, checkpoint, prompt), stated plainly."""


def describe_error(err: BaseException) -> str:
    """An exception's type and the first line of its message, for a one-line warning."""
    first_line = (str(err).strip().splitlines() or [""])[0][:200]
    return f"{type(err).__name__}: {first_line}" if first_line else type(err).__name__
