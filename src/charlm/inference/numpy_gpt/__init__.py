"""A from-scratch NumPy implementation of the GPT forward pass (no torch needed).

positional.py, layernorm.py, feedforward.py, attention.py, block.py, model.py: one component each.
"""

import numpy as np

from charlm.core.errors import CharLMError
from charlm.core.export_format import read_export
from charlm.core.internals import NotReadable, read_torch_file
from charlm.core.model_config import full_config, model_state
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


def load_checkpoint(file) -> tuple[NumpyGPT, Vocabulary] | None:
    """A GPT from a training checkpoint file, read without torch (charlm.core.internals); None where torch
    must read the file (another model, int8 or bfloat16 weights, a file that reader does not know: torch's
    loader then also says what is wrong with it)."""
    try:
        checkpoint = read_torch_file(file, keys=("hyper_parameters", "state_dict"))  # not the optimizer state
        hparams = checkpoint["hyper_parameters"]
        if hparams["model"]["name"] != "gpt" or hparams.get("quantization") is not None:
            return None
        vocab = Vocabulary(hparams["vocab"], hparams.get("vocab_mode", "chars"))
        model = NumpyGPT(full_config(hparams["model"]), model_state(checkpoint["state_dict"]))
        model.logits(np.zeros((1, 1), dtype=np.int64))  # weights of the shapes the config says, or an error
    except (NotReadable, KeyError, TypeError, ValueError, IndexError, CharLMError):
        return None
    return model, vocab


__all__ = ["NumpyGPT", "from_export", "load_checkpoint", "load_export", "random_weights"]
