"""The only place that touches private internals of Lightning and torch.

Each one is here because it was measured to matter or has no public equivalent; each has a fallback
to the public path for a release that drops it, and tests/test_layout.py fails loudly when one is gone,
so an upgrade is noticed rather than silently slower.
"""

import torch
from torch import nn

# Lightning's LightningModule attribute that names the hook being run; Lightning sets it around every
# hook call, about 40 times a training step.
LIGHTNING_HOOK_NAME_ATTRIBUTE = "_current_fx_name"


def set_plain_attribute(module: nn.Module, name: str, value) -> bool:
    """Set `name` with object.__setattr__ when it is Lightning's hook-name attribute; returns whether it did.

    nn.Module.__setattr__ (three isinstance checks through Parameter's Python metaclass) makes those
    40 assignments a measurable share of the 0.2M model's CPU step (docs/performance.md). The value,
    a hook name or None, is never a parameter, buffer or submodule, so plain assignment is equivalent.
    Any other name returns False and takes nn.Module's public path.
    """
    if name != LIGHTNING_HOOK_NAME_ATTRIBUTE:
        return False
    object.__setattr__(module, name, value)
    return True


def undo_module_compile(model: nn.Module) -> bool:
    """Return a model compiled in place with nn.Module.compile() to eager execution.

    torch has no public inverse of nn.Module.compile(), which keeps the compiled call in
    `_compiled_call_impl`. Returns False where that attribute is gone: the caller then stops with an
    error instead of training a half-compiled model.
    """
    if not hasattr(model, "_compiled_call_impl"):
        return False
    model._compiled_call_impl = None
    return True


def mark_static_address(tensor: torch.Tensor) -> bool:
    """Tell a CUDA-graph compile that `tensor` keeps its address between calls, so the graph reads and
    writes it in place instead of copying it in and out on every replay (a generation cache).

    Only torch._dynamo offers this. Without it the compiled step is still correct, only slower, so the
    fallback is to do nothing; returns whether it marked the tensor.
    """
    mark = getattr(getattr(torch, "_dynamo", None), "mark_static_address", None)
    if mark is None:
        return False
    mark(tensor)
    return True


def align_logging_step(trainer) -> bool:
    """Call at the first training batch: make a resumed run log each step at the step it trains.

    Lightning counts logging steps in `fit_loop.epoch_loop._batches_that_stepped`. It restores that
    count one behind the optimizer steps from a checkpoint saved by a validation that a stop asked for
    (max_time, Ctrl-C, SIGTERM, the last step), so every logged point after the resume would sit one
    step early. With one optimizer, as here, the two counts are equal by definition. Returns False
    where the attribute is gone: logging steps then stay as Lightning restores them.
    """
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    if loop is None or not hasattr(loop, "_batches_that_stepped"):
        return False
    loop._batches_that_stepped = trainer.global_step
    return True
