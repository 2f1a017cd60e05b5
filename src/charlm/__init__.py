"""Character-level language models: data, models, training, sampling."""

from charlm.core.errors import CharLMError

__all__ = ["CharLMError"]
