"""Where and how fast training runs: CPU threads, the training device, mixed precision, torch.compile."""

import contextlib
import sys

import torch
from omegaconf import DictConfig, OmegaConf

from charlm.core.errors import CharLMError, describe_error
from charlm.inference.internals import undo_module_compile
from charlm.training.console import say


def use_fast_kernels(threads: int | None) -> None:
    """Intra-op threads as configured; TF32 matmuls and convolutions on GPUs that have them."""
    if threads:
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def check_devices(cfg: DictConfig) -> None:
    """The accelerator and device count asked for exist on this machine."""
    accelerator, devices = cfg.trainer.accelerator, cfg.trainer.devices
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise CharLMError(f"trainer.accelerator={accelerator} (trainer=gpu or trainer=ddp) needs a CUDA GPU, and "
                              "torch finds none on this machine; use trainer=auto or trainer=cpu")
        count = len(devices) if OmegaConf.is_list(devices) else devices
        if isinstance(count, int) and count > torch.cuda.device_count():
            raise CharLMError(f"trainer.devices={devices}: this machine has {torch.cuda.device_count()} GPU(s)")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise CharLMError("trainer.accelerator=mps needs Apple's Metal backend, which this machine lacks")


def training_device(cfg: DictConfig) -> str:
    """Where the trainer will put the model: a GPU unless the CPU is asked for or there is none."""
    return "cpu" if cfg.trainer.accelerator == "cpu" or not torch.cuda.is_available() else "cuda"


def mixed_dtype(precision: str) -> torch.dtype | None:
    """The half-precision type a mixed `precision` setting multiplies in; None for full precision."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))


def autocast(precision: str, device: str):
    """The autocast context Lightning's `precision` setting trains under (none for full precision)."""
    dtype = mixed_dtype(precision)
    return torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext()


def compile_model(model: torch.nn.Module, example: torch.Tensor, precision: str = "32-true") -> bool:
    """Compile in place (state_dict keys stay unchanged), trying one forward and backward pass now
    on the example's device, batch shape and precision, so the kernels built are those training uses.

    Returns False, after a warning, when this machine cannot compile, and the model stays eager.
    """
    home = next(model.parameters()).device
    try:
        model.compile()
        with autocast(precision, example.device.type):
            loss = model.to(example.device)(example).float().sum()
        loss.backward()
        model.zero_grad(set_to_none=True)
        model.to(home)
        return True
    except Exception as err:  # compilers fail in many ways: no C++ toolchain, unsupported platform...
        model.to(home)
        torch.compiler.reset()
        if not undo_module_compile(model):
            raise CharLMError(f"compile=true failed ({describe_error(err)}); train with compile=false") from None
        say(f"warning: compile=true failed, training without torch.compile ({describe_error(err)})", sys.stderr)
        return False
