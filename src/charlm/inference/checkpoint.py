"""The one place that reads checkpoints. It needs no Lightning: sampling and export load plain tensors.

(Writing is Lightning's, made atomic by `charlm.training.trainer.AtomicCheckpointIO`.)
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from charlm.core.errors import CharLMError
from charlm.core.export_format import is_export, read_export
from charlm.core.model_config import full_config, model_state
from charlm.core.run_folder import find_checkpoint
from charlm.core.vocab import Vocabulary
from charlm.models import build_model
from charlm.models.int8 import quantize_model

# Keys the LightningModule adds to training checkpoints:
TOKENS_KEY = "tokens_trained"  # training tokens so far, over every resume and batch size
BEST_KEY = "best_val"  # {"loss": the lowest val/loss so far, "step": its global step}, or None before any
WALL_KEY = "wall_time_s"  # seconds of training so far (validation included), over every resume


def load_mapped(path: Path) -> dict:
    """torch.load of a file mapped, not read: callers touch the weights and settings, not the optimizer
    state that is most of a training checkpoint. Read whole where mapping fails (a file system that
    cannot map, a file in torch's legacy format); a damaged file fails that way too."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a folder or a damaged file fails again here, with torch's own error
        return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: Path) -> dict:
    """torch.load with every way a file can fail to be a checkpoint turned into a CharLMError."""
    try:
        checkpoint = load_mapped(path)
    except IsADirectoryError:
        raise CharLMError(f"checkpoint path is a directory: {path}") from None
    except Exception:  # torch.load fails in many ways on a truncated or foreign file
        raise CharLMError(f"not a readable checkpoint (truncated, corrupt or not a checkpoint): {path}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CharLMError(f"not a charlm checkpoint (no weights inside): {path}")
    hparams = checkpoint.get("hyper_parameters", {})
    if not {"model", "vocab"} <= hparams.keys():
        raise CharLMError(f"not a charlm checkpoint (no model config or vocabulary inside): {path}")
    return checkpoint


@dataclass
class LoadedModel:
    model: nn.Module
    vocab: Vocabulary
    model_config: dict
    path: Path
    quantization: dict | None = None  # set for int8 checkpoints from charlm.inference.quantize
    data: dict | None = None  # the data settings its run recorded (training checkpoints, int8 files, exports)


def load_model(path: str | Path) -> LoadedModel:
    """Build the model a checkpoint, run folder or .npz export describes and load its weights, in eval mode."""
    file = find_checkpoint(path)
    quantization, data = None, None
    if is_export(file):
        meta, arrays = read_export(file)
        model_config, vocab_chars, vocab_mode = meta["model"], meta["vocab"], meta.get("vocab_mode", "chars")
        data = meta.get("data")  # exports made before it was recorded hold none
        state = {name: torch.from_numpy(array) for name, array in arrays.items()}
    else:
        checkpoint = read_checkpoint(file)
        hparams = checkpoint["hyper_parameters"]
        model_config, vocab_chars, quantization = hparams["model"], hparams["vocab"], hparams.get("quantization")
        vocab_mode = hparams.get("vocab_mode", "chars")
        data = checkpoint.get("datamodule_hyper_parameters", {}).get("data")
        state = model_state(checkpoint["state_dict"])
    vocab = Vocabulary(vocab_chars, vocab_mode)
    model = build_model(model_config, vocab_size=len(vocab))
    if quantization is not None:
        quantize_model(model, quantization["quantize_head"])
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = "; ".join(line.strip() for line in str(err).splitlines()[1:3]) or str(err)
        raise CharLMError(f"weights in {file} do not match its model config ({detail})") from None
    # in today's knob names, every default filled in, whatever release saved it
    return LoadedModel(model.eval(), vocab, full_config(model_config), file, quantization, data)


def numpy_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's weights under their torch names, as NumPy arrays (for the NumPy engine and exports)."""
    return {name: tensor.detach().cpu().numpy() for name, tensor in model.state_dict().items()}
