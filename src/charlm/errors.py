"""The one exception type for mistakes a user can fix; entry points print it as one line."""


class CharLMError(Exception):
    """A problem with the user's input (data, config, checkpoint, prompt), stated plainly."""
