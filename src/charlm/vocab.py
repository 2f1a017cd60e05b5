"""The character vocabulary: the one place that maps text to token ids and back."""

from collections.abc import Sequence

from charlm.errors import CharLMError


class Vocabulary:
    """Sorted unique characters of a text; token id = position in that order."""

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars):
            raise CharLMError("vocabulary has repeated characters")
        self.chars = chars
        self.index = {ch: i for i, ch in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "Vocabulary":
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` that are not in the vocabulary, sorted."""
        return sorted(set(text) - self.index.keys())

    def encode(self, text: str) -> list[int]:
        missing = self.unknown(text)
        if missing:
            shown = ", ".join(repr(ch) for ch in missing)
            raise CharLMError(f"characters not in the model's vocabulary: {shown}")
        return [self.index[ch] for ch in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids)
