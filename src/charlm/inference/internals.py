"""The private internals of torch this package touches (Lightning's: charlm.training.internals).

Each one has no public equivalent; each has a fallback for a release that drops it, and
tests/test_layout.py fails loudly when one is gone, so an upgrade is noticed rather than silently slower.
"""

import torch
from torch import nn


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
