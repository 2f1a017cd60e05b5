"""Model families by name. Models are plain nn.Modules: they know nothing of Lightning or Hydra."""

from dataclasses import asdict

from torch import nn

from charlm.errors import CharLMError
from charlm.models.cnn import DilatedCNN
from charlm.models.gpt import GPT

MODELS: dict[str, type[nn.Module]] = {"gpt": GPT, "cnn": DilatedCNN}


def build_model(config: dict, vocab_size: int) -> nn.Module:
    """Build a model from its config dict ({"name": "gpt", ...sizes}) and the vocabulary size."""
    options = dict(config)
    name = options.pop("name", None)
    if name not in MODELS:
        raise CharLMError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    try:
        return MODELS[name](vocab_size=vocab_size, **options)
    except TypeError as err:  # an option the model does not take
        raise CharLMError(f"model {name}: {err}") from None
    except ValueError as err:
        raise CharLMError(f"model {name}: {err}") from None


def full_config(config: dict) -> dict:
    """A model config with every default filled in, so configs saved before an option existed
    compare equal to today's when they mean the same model."""
    options = {k: v for k, v in config.items() if k != "name"}
    try:
        full = asdict(MODELS[config.get("name")](vocab_size=1, **options).config)
    except (KeyError, TypeError, ValueError):
        return dict(config)
    full.pop("vocab_size")
    return {"name": config.get("name"), **full}


def count_parameters(model: nn.Module) -> int:
    """Parameters counted once, even when tied."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["GPT", "DilatedCNN", "MODELS", "build_model", "count_parameters"]
