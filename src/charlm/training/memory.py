"""How much memory a training configuration needs, estimated before anything real is allocated, so a
run that cannot fit is refused in one line instead of being killed by the kernel's OOM killer."""

import torch

from charlm.core.checks import available_ram
from charlm.core.errors import CharLMError
from charlm.models import build_model

FLOAT = 4  # bytes: weights, gradients, optimizer state and activations are float32
# Activations autograd keeps per token, per layer, in units of the width: GPT blocks keep about 18
# (norms, q/k/v, attention output, projections, the 4x MLP before and after its activation),
# the CNN's gated convolutions about 8.
ACTIVATIONS_PER_LAYER = {"gpt": 18, "cnn": 8}


def parameter_count(model_config: dict, vocab_size: int) -> int:
    """Exact, from the model built on the meta device: shapes without storage."""
    with torch.device("meta"):
        model = build_model(model_config, vocab_size)
    return sum(p.numel() for p in model.parameters())


def training_bytes(model_config: dict, vocab_size: int, batch_size: int, block_size: int) -> int:
    """A lower estimate of one training process's peak: weights, gradients and AdamW's two moments,
    the activations a step keeps for its backward pass, and the logits with their gradient."""
    name = model_config["name"]
    width, layers = model_config["n_embd"], model_config["n_layer"]
    tokens = batch_size * block_size
    activations = tokens * layers * width * ACTIVATIONS_PER_LAYER[name]
    if name == "gpt":  # attention scores, kept when dropout or the math kernel is used
        activations += batch_size * model_config["n_head"] * block_size * block_size * layers
    logits = 3 * tokens * vocab_size  # logits, their softmax and gradient
    return FLOAT * (4 * parameter_count(model_config, vocab_size) + activations + logits)


def available_bytes(device: str) -> tuple[int | None, str]:
    """Free memory where training runs, and what it is; None where it cannot be read."""
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return free, f"free on {torch.cuda.get_device_name()}"
    return available_ram(), "available in RAM"


def check_fits(model_config: dict, vocab_size: int, batch_size: int, block_size: int, device: str,
               processes: int = 1) -> None:
    """Refuse a configuration whose estimate exceeds the free memory, naming both."""
    need = processes * training_bytes(model_config, vocab_size, batch_size, block_size)
    free, where = available_bytes(device)
    if free is not None and need > free:
        raise CharLMError(f"this configuration needs about {need / 2**30:,.1f} GiB to train ({processes} process(es), "
                          f"batch_size {batch_size}, block_size {block_size}) but {free / 2**30:,.1f} GiB is {where}; "
                          "lower batch_size, block_size or the model's size")

