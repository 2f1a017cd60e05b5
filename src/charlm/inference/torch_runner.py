"""Lets the NumPy generation loop (charlm.core.generation) drive a torch model, eager or with a compiled
one-character step that reuses its cache."""

import contextlib
import dataclasses
import io
import sys

import numpy as np
import torch
from torch import nn

from charlm.core.errors import CharLMError, describe_error
from charlm.inference.internals import mark_static_address

# Inductor settings for a compiled one-character step on CPU. Freezing folds the weights into the
# compiled code as constants, which lets Inductor's own C++ GEMM kernels (chosen by autotuning
# against ATen) spread each batch-1 product over every thread: MKL runs those on one core.
CPU_STEP_OPTIONS = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}


def check_device(name: str, device: str) -> None:
    """`device` (cpu, cuda, cuda:1, mps, ...) is a device torch knows and this machine has."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise CharLMError(f"{name} must be a torch device such as cpu or cuda, got {device!r}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise CharLMError(f"{name}={device}: torch finds no CUDA GPU on this machine; use {name}=cpu")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise CharLMError(f"{name}={device}: this machine has {torch.cuda.device_count()} GPU(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise CharLMError(f"{name}={device}: this machine has no Apple Metal backend")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise CharLMError(f"{name}={device}: charlm runs on cpu, cuda or mps")


class TorchRunner:
    """Takes and returns NumPy arrays; runs the model in eval mode under inference_mode.

    compile=True compiles the one-new-character cached step (models with a `step` method: the GPT):
    on CPU with a frozen copy of the weights, on a GPU as a CUDA graph. Either way it suits a finished
    model, not one still training, generating one text (batch) at a time: a second generation of the
    same batch size, started before the first ends, makes the first fail at its next step. Where
    compiling fails, one warning says so and generation stays eager.
    """

    def __init__(self, model: nn.Module, compile: bool = False):
        self.model = model
        self.block_size = model.block_size
        self.device = next(model.parameters()).device
        self.has_cache = hasattr(model, "forward_cached")
        self.compiled_step = None
        if compile and not hasattr(model, "step"):
            say(f"warning: compile=true: {type(model).__name__} has no compilable step, generating eagerly")
        elif compile and self.device.type == "cpu":
            self.compiled_step = torch.compile(model.step, fullgraph=True, dynamic=False, options=CPU_STEP_OPTIONS)
        elif compile:
            # On a GPU, launching the many small kernels of one character's step is the cost, and
            # CUDA graphs replay them all at once (docs/performance.md has the gain).
            self.compiled_step = torch.compile(model.step, fullgraph=True, dynamic=False, mode="reduce-overhead")
        self.compiled_batches: set[int] = set()
        self.caches = {}  # batch size -> the cache the compiled step reuses
        self.current = {}  # batch size -> the handle on it of the one generation allowed to use it

    def __enter__(self) -> "TorchRunner":
        self.was_training = self.model.training
        self.model.eval()
        return self

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)

    def _ids(self, ids: np.ndarray) -> torch.Tensor:
        # a fresh copy with plain strides: a compiled step guards on strides, and the loop passes column slices
        return torch.as_tensor(ids.copy(), dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def logits(self, ids: np.ndarray) -> np.ndarray:
        return self.model(self._ids(ids))[:, -1].float().cpu().numpy()  # (B, V)

    @torch.inference_mode()
    def forward_cached(self, ids: np.ndarray, cache):
        idx = self._ids(ids)
        if self.compiled_step is None:
            logits, cache = self.model.forward_cached(idx, cache)
        else:
            if cache is not None and cache is not self.current.get(idx.shape[0]):
                raise RuntimeError("another generation of the same batch size took this compiled runner's cache; "
                                   "finish one text before starting the next, or give each its own runner")
            cache = self._reused_cache(idx.shape[0]) if cache is None else cache
            step = self._compiled if idx.shape[1] == 1 else None  # prompts and restarts run eagerly
            logits, cache = self.model.forward_cached(idx, cache, step)
        return logits[:, -1].float().cpu().numpy(), cache  # (B, V)

    def _reused_cache(self, batch: int):
        """One cache per batch size serves every generation and window restart of a compiled step: a CUDA
        graph records the buffers' addresses, and new ones would make it record again. Slots left from
        earlier text are hidden, as empty ones are, until written. Each start hands out a new handle on
        the same buffers, so a generation still using an older one fails instead of reading another's."""
        if batch not in self.caches:
            self.caches[batch] = self.model.new_cache(batch)
            if self.device.type == "cuda":
                for buffer in (*self.caches[batch].keys, *self.caches[batch].values):
                    mark_static_address(buffer)  # or the graph would copy them in and out
        self.current[batch] = dataclasses.replace(self.caches[batch], length=0)
        return self.current[batch]

    def _compiled(self, idx: torch.Tensor, *args):
        batch = idx.shape[0]
        if batch in self.compiled_batches:
            return self.compiled_step(idx, *args)
        # A new batch size compiles a new graph: only then does the quiet matter.
        say(f"compiling the generation step for batch {batch} (faster once Inductor's disk cache holds it)")
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                logits = self.compiled_step(idx, *args)  # autotuning prints tables of kernel timings
        except Exception as err:  # compilers fail in many ways: no C++ toolchain, unsupported platform...
            self.compiled_step = None
            torch.compiler.reset()
            say(f"warning: compile=true failed, generating eagerly ({describe_error(err)})")
            return self.model.step(idx, *args)
        self.compiled_batches.add(batch)
        return logits


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
