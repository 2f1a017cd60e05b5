"""The private internals of Lightning this package touches (torch's: charlm.inference.internals and
charlm.core.internals).

Each one is here because it was measured to matter or has no public equivalent; each has a fallback
to the public path for a release that drops it, and tests/test_layout.py fails loudly when one is gone,
so an upgrade is noticed rather than silently slower.
"""

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


def drop_wandb_anonymous(logger) -> bool:
    """Take out the `anonymous=None` that Lightning's WandbLogger always passes to wandb.init, which
    recent wandb answers on every run with "The anonymous setting has no effect and will be removed"
    (it warns about any value, None included; the logger has no public way to leave it out). Returns
    False where the logger's init arguments are gone or hold another value: the warning then stays."""
    arguments = getattr(logger, "_wandb_init", None)
    if not isinstance(arguments, dict) or "anonymous" not in arguments or arguments["anonymous"] is not None:
        return False
    del arguments["anonymous"]
    return True
