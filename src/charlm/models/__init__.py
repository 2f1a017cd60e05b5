"""Model families by name. Models are plain nn.Modules: they know nothing of Lightning or Hydra."""

from dataclasses import asdict

from torch import nn

from charlm.core.model_config import model_settings
from charlm.models.cnn import DilatedCNN
from charlm.models.gpt import GPT

MODELS: dict[str, type[nn.Module]] = {"gpt": GPT, "cnn": DilatedCNN}


def build_model(config: dict, vocab_size: int) -> nn.Module:
    """Build a model from its config dict ({"name": "gpt", ...sizes}) and the vocabulary size."""
    settings = model_settings(config, vocab_size)  # checked here: a bad option is one CharLMError
    return MODELS[config["name"]](**asdict(settings))


def count_parameters(model: nn.Module) -> int:
    """Parameters counted once, even when tied."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["GPT", "DilatedCNN", "MODELS", "build_model", "count_parameters"]
