"""Character-level language models: data, models, training, sampling."""

from charlm.errors import CharLMError

__all__ = ["CharLMError"]
