"""A from-scratch NumPy implementation of the GPT forward pass (no torch needed).

positional.py, layernorm.py, feedforward.py, attention.py, block.py, model.py: one component each.
"""

from charlm.core.errors import CharLMError
from charlm.core.export_format import read_export
from charlm.core.vocab import Vocabulary
from charlm.inference.numpy_gpt.model import NumpyGPT, random_weights


def load_export(path) -> tuple[NumpyGPT, Vocabulary]:
    """A GPT from a portable export (`python -m charlm export CKPT --format npz`)."""
    return from_export(path, *read_export(path))


def from_export(path, meta: dict, arrays: dict) -> tuple[NumpyGPT, Vocabulary]:
    """The same from an export already read (`read_export`)."""
    config = dict(meta["model"])
    if config.get("name") != "gpt":
        raise CharLMError(f"the NumPy engine runs GPT models; {path} holds a {config.get('name')} model")
    return NumpyGPT(config, arrays), Vocabulary(meta["vocab"], meta.get("vocab_mode", "chars"))


__all__ = ["NumpyGPT", "from_export", "load_export", "random_weights"]
