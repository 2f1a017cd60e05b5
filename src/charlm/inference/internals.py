"""The private internals of torch this package touches (Lightning's: charlm.training.internals; torch's file
format, read without torch: charlm.core.internals).

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


CPU_ATTENTION_OP = "_scaled_dot_product_flash_attention_for_cpu"  # what F.scaled_dot_product_attention runs on CPU


def count_cpu_attention_flops(op_name: str = CPU_ATTENTION_OP) -> bool:
    """Have torch's FLOP counter (which Lightning's model summary uses) count the CPU's fused attention
    kernel with the formula it uses for the GPU's. torch registers one for the CUDA flash, efficient and
    cuDNN kernels but not for the CPU's, so a summary on the CPU left the attention products out.
    Returns False where that op is gone (attention then counts 0 again).
    """
    from torch.utils import flop_counter

    op = getattr(torch.ops.aten, op_name, None)
    if op is None:
        return False
    if op not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(op, get_raw=True)(flop_counter.sdpa_flop)  # sdpa_flop takes shapes
    return True
