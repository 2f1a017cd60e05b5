"""The vocabulary: the one place that maps text to token ids and back.

`chars`: the sorted distinct characters of a text; token id = position in that order.
`bytes`: the 256 byte values, for any file; text is encoded as UTF-8 on the way in and decoded, with
replacement characters for incomplete sequences, on the way out. Symbols are stored as the characters
chr(0) .. chr(255) so both modes share one representation.
"""

import codecs
from collections.abc import Callable, Sequence

from charlm.core.errors import CharLMError

MODES = ("chars", "bytes")


def listed(chars: Sequence[str], most: int = 20) -> str:
    """Characters for an error line: each as its repr, the first `most` of them and how many more."""
    shown = ", ".join(map(repr, chars[:most]))
    return shown + (f" and {len(chars) - most} more" if len(chars) > most else "")


class Vocabulary:
    def __init__(self, chars: str, mode: str = "chars"):
        if mode not in MODES:
            raise CharLMError(f"vocabulary mode must be one of {', '.join(MODES)}, got {mode!r}")
        if len(set(chars)) != len(chars):
            raise CharLMError("vocabulary has repeated characters")
        if mode == "bytes" and chars != BYTE_SYMBOLS:
            raise CharLMError("a bytes vocabulary holds the 256 byte values in order")
        self.chars = chars
        self.mode = mode
        self.index = {ch: i for i, ch in enumerate(chars)}

    @classmethod
    def bytes(cls) -> "Vocabulary":
        return cls(BYTE_SYMBOLS, "bytes")

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and (self.chars, self.mode) == (other.chars, other.mode)

    def describe(self) -> str:
        return "256 bytes" if self.mode == "bytes" else f"{len(self):,} character{'' if len(self) == 1 else 's'}"

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` that are not in the vocabulary, sorted (none for bytes: any text is UTF-8)."""
        return [] if self.mode == "bytes" else sorted(set(text) - self.index.keys())

    def encode(self, text: str) -> list[int]:
        if self.mode == "bytes":
            return list(text.encode("utf-8"))
        missing = self.unknown(text)
        if missing:
            raise CharLMError(f"characters not in the model's vocabulary: {listed(missing)}")
        return [self.index[ch] for ch in text]

    def decode(self, ids: Sequence[int]) -> str:
        if self.mode == "bytes":
            return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
        return "".join(self.chars[i] for i in ids)

    def streaming_decoder(self) -> Callable[[int], str]:
        """Text for one id at a time, as it is generated (bytes: whole UTF-8 characters once complete)."""
        if self.mode == "chars":
            return lambda token: self.chars[token]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda token: decoder.decode(bytes((token,)))


BYTE_SYMBOLS = "".join(map(chr, range(256)))
