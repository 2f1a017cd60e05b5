"""A corpus as tokens on disk: encoded once, vectorised, into a cache file that later runs memory-map.

Two vocabularies (`data.vocab`): `chars`, the sorted distinct Unicode characters of a UTF-8 text, and
`bytes`, a fixed 256-symbol vocabulary for any file. The cache holds `<name>.<key>.<vocab>.tokens`
(raw uint8 ids when the vocabulary fits, else uint16 or uint32) and a `.json` beside it, written last:
without a matching .json a tokens file is never used. The key is a hash of the corpus's content;
an index entry per source file (its path, size and modification time) finds that key without
re-reading a large corpus on every run, and a changed file is hashed and encoded again. Torch-free.
"""

import codecs
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from charlm.core.atomic import atomic_write
from charlm.core.errors import CharLMError, close_name
from charlm.core.vocab import MODES, Vocabulary, listed

TINY_SHAKESPEARE = "tinyshakespeare"
FORMAT = "charlm-tokens"
VERSION = 1
CHUNK = 1 << 24  # bytes read, decoded and encoded at a time: memory stays flat whatever the corpus size
BOM = b"\xef\xbb\xbf"


def resolve_path(path: str | None) -> Path:
    """`None` or "tinyshakespeare" means the corpus shipped inside the package."""
    if path is None or path == TINY_SHAKESPEARE:
        return Path(str(resources.files("charlm") / "corpora" / "tinyshakespeare.txt"))
    return Path(path).expanduser()


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/charlm/tokens, or ~/.cache/charlm/tokens: delete it at any time."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "charlm" / "tokens"


@dataclass
class Corpus:
    tokens: np.ndarray  # (N,) ids, memory-mapped from the cache (or in memory when it cannot be written)
    vocab: Vocabulary
    source: Path
    cache_file: Path | None


def check_source(file: Path) -> int:
    """The file's size, or one CharLMError for every way it cannot be a corpus."""
    if not file.exists():
        raise CharLMError(f"data file not found: {file}{likely_meant(file)}")
    if file.is_dir():
        raise CharLMError(f"data path is a directory, not a text file: {file}")
    try:
        size = file.stat().st_size
    except OSError as err:
        raise CharLMError(f"cannot read data file {file}: {err.strerror}") from None
    if size == 0:
        raise CharLMError(f"data file is empty: {file}")
    return size


def likely_meant(file: Path) -> str:
    """A hint for a mistyped data path: the shipped corpus's name, or a file of the same folder."""
    match = close_name(file, (TINY_SHAKESPEARE,) if file.parent == Path() else ())
    if match is None:
        return ""
    if match == TINY_SHAKESPEARE and not Path(TINY_SHAKESPEARE).exists():
        return f" (did you mean {TINY_SHAKESPEARE}, the corpus shipped in the package?)"
    return f" (did you mean {file.parent / match}?)"


def read_chunks(file: Path):
    try:
        with open(file, "rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk
    except OSError as err:
        raise CharLMError(f"cannot read data file {file}: {err.strerror}") from None


def content_key(file: Path) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for chunk in read_chunks(file):
        digest.update(chunk)
    return digest.hexdigest()


def code_points(file: Path):
    """The file's characters as uint32 code points, a chunk at a time (a byte-order mark dropped)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, first = 0, True
    for chunk in read_chunks(file):
        if first and chunk.startswith(BOM):
            chunk, offset = chunk[len(BOM):], len(BOM)
        first = False
        if b"\x00" in chunk:
            raise CharLMError(f"data file looks binary (it contains NUL bytes), not text: {file}; "
                              "data.vocab=bytes trains on any file")
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as err:
            raise CharLMError(f"data file is not UTF-8 text: {file} (invalid byte at offset {offset + err.start}); "
                              "data.vocab=bytes trains on any file") from None
        offset += len(chunk)
        yield np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise CharLMError(f"data file is not UTF-8 text: {file} (it ends inside a character); "
                          "data.vocab=bytes trains on any file") from None


def symbols(file: Path, mode: str):
    """(chunks of symbol numbers, the size of the table that maps them): code points or bytes."""
    if mode == "bytes":
        return (np.frombuffer(chunk, dtype=np.uint8) for chunk in read_chunks(file)), 256
    return code_points(file), 0x110000


def id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32)


def encode(file: Path, mode: str, out: Path | None) -> tuple[Vocabulary, np.ndarray | None]:
    """Two passes over the file, vectorised: which symbols occur, then their ids. With `out`, the ids
    stream to that file; without, they are returned."""
    if mode == "bytes":
        vocab = Vocabulary.bytes()
    else:
        chunks, table_size = symbols(file, mode)
        present = np.zeros(table_size, dtype=bool)
        for chunk in chunks:
            present[chunk] = True
        vocab = Vocabulary("".join(map(chr, np.flatnonzero(present))))
    dtype = id_dtype(len(vocab))
    chunks, table_size = symbols(file, mode)
    lookup = np.zeros(table_size, dtype=dtype)
    lookup[np.array([ord(ch) for ch in vocab.chars], dtype=np.int64)] = np.arange(len(vocab), dtype=dtype)
    if out is None:
        return vocab, np.concatenate([lookup[chunk] for chunk in chunks] or [np.zeros(0, dtype)])
    with open(out, "wb") as handle:
        for chunk in chunks:
            handle.write(lookup[chunk].tobytes())
        handle.flush()
        os.fsync(handle.fileno())
    return vocab, None


def ids_in(tokens: np.ndarray, own: Vocabulary, model: Vocabulary, what: str, hint: str = "") -> np.ndarray:
    """Tokens of a corpus (ids of its `own` vocabulary) as ids of a model's vocabulary, which may hold
    more characters (a fine-tuned model on the text it was tuned on); one error names what it lacks."""
    if own == model:
        return tokens
    if missing := [ch for ch in own.chars if ch not in model.index]:
        raise CharLMError(f"{what} has characters the model's vocabulary lacks: "
                          + listed(missing) + hint)
    remap = np.array([model.index[ch] for ch in own.chars], dtype=np.int64)
    return remap[tokens].astype(id_dtype(len(model)))


def file_times(stat: os.stat_result) -> list[int]:
    """What changes when a file's bytes do: size, modification time and change time (ns)."""
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def largest_id(tokens_file: Path, dtype: np.dtype, window: int = 1 << 26) -> int:
    """The largest id in a tokens file, mapped one window at a time: a max over one map of the whole
    file would keep every page of it resident, counted in the run's RSS."""
    count, largest = tokens_file.stat().st_size // dtype.itemsize, 0
    for start in range(0, count, window):
        part = np.memmap(tokens_file, dtype=dtype, mode="r", offset=start * dtype.itemsize,
                         shape=(min(window, count - start),))
        largest = max(largest, int(part.max()))
        del part  # unmapped: its pages leave this process's RSS
    return largest


class TokenCache:
    """Files in `folder`: tokens + .json per corpus and vocabulary, and an index from a source file's
    (path, size, modification and change times) to its content key. The change time (ctime) is what
    `cp -p`, `rsync -a` and `tar` cannot keep: an edit that keeps the size and modification time is
    still seen. The .json records the tokens file's own times, so one changed in place is not trusted,
    and every id served must be inside the vocabulary (largest_id reads the file once per start)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder).expanduser()

    def index_file(self, source: Path, mode: str) -> Path:
        name = hashlib.blake2b(str(source.resolve()).encode(), digest_size=8).hexdigest()
        return self.folder / f"index.{name}.{mode}.json"

    def paths(self, source: Path, key: str, mode: str) -> tuple[Path, Path]:
        stem = f"{source.stem[:40]}.{key}.{mode}"
        return self.folder / f"{stem}.tokens", self.folder / f"{stem}.json"

    def known_key(self, source: Path, mode: str, stat: os.stat_result) -> str | None:
        try:
            entry = json.loads(self.index_file(source, mode).read_text())
        except (OSError, ValueError):
            return None
        return entry.get("key") if entry.get("stat") == file_times(stat) else None

    def load(self, source: Path, key: str, mode: str) -> Corpus | None:
        """The cached corpus, or None when it is missing, half written, truncated or foreign."""
        tokens_file, meta_file = self.paths(source, key, mode)
        try:
            meta = json.loads(meta_file.read_text())
            dtype = np.dtype(meta["dtype"])
            vocab = Vocabulary(meta["vocab"], meta["mode"])
            ok = (meta.get("format") == FORMAT and meta.get("version") == VERSION and meta.get("key") == key
                  and meta["mode"] == mode and tokens_file.stat().st_size == meta["count"] * dtype.itemsize
                  and meta.get("tokens_stat") == file_times(tokens_file.stat()))
            if not ok or meta["count"] == 0:
                return None
            if largest_id(tokens_file, dtype) >= len(vocab):  # ids no vocabulary has: not what encode() wrote
                return None
            return Corpus(np.memmap(tokens_file, dtype=dtype, mode="r"), vocab, source, tokens_file)
        except (OSError, ValueError, KeyError, TypeError, CharLMError):
            return None

    def store(self, source: Path, key: str, mode: str, stat: os.stat_result) -> Corpus:
        """Encode into a temporary file, then publish tokens and .json by rename: a crash or a full disk
        leaves no file that load() would take."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tokens_file, meta_file = self.paths(source, key, mode)
        temp = tokens_file.with_name(f".{tokens_file.name}.{os.getpid()}.tmp")
        try:
            vocab, _ = encode(source, mode, temp)
            count = temp.stat().st_size // id_dtype(len(vocab)).itemsize
            os.replace(temp, tokens_file)
        finally:
            temp.unlink(missing_ok=True)
        if count == 0:
            raise CharLMError(f"data file has no text (only a byte-order mark): {source}")
        meta = {"format": FORMAT, "version": VERSION, "key": key, "mode": mode, "source": str(source),
                "dtype": id_dtype(len(vocab)).name, "count": count, "vocab": vocab.chars,
                "tokens_stat": file_times(tokens_file.stat())}
        atomic_write(meta_file, lambda handle: handle.write(json.dumps(meta).encode()))
        self.store_index(source, key, mode, stat)
        return self.load(source, key, mode)

    def store_index(self, source: Path, key: str, mode: str, stat: os.stat_result) -> None:
        index = {"key": key, "stat": file_times(stat), "source": str(source)}
        atomic_write(self.index_file(source, mode), lambda handle: handle.write(json.dumps(index).encode()))


def load_corpus(path: str | None, mode: str = "chars", cache_dir: str | Path | None = None) -> Corpus:
    """The corpus at `path` as tokens: from the cache when it holds them, else encoded into it. A cache
    folder that cannot be written gives a one-line warning and the tokens in memory instead."""
    if mode not in MODES:
        raise CharLMError(f"data.vocab must be one of {', '.join(MODES)}, got {mode!r}")
    source = resolve_path(path)
    check_source(source)
    stat = source.stat()
    cache = TokenCache(Path(cache_dir) if cache_dir else default_cache_dir())
    key = cache.known_key(source, mode, stat)
    if key and (corpus := cache.load(source, key, mode)):
        return corpus
    key = content_key(source)
    if corpus := cache.load(source, key, mode):  # same content under another name or time stamp
        try:
            cache.store_index(source, key, mode, stat)
        except OSError:
            pass
        return corpus
    try:
        corpus = cache.store(source, key, mode, stat)
    except OSError as err:
        blocking = next((p for p in (cache.folder, *cache.folder.parents) if p.is_file()), None)
        why = f"{blocking} is a file, not a folder" if blocking else err.strerror or err
        print(f"warning: cannot write the token cache in {cache.folder} ({why}); "
              "encoding into memory instead (set data.cache_dir to a writable folder)", file=sys.stderr, flush=True)
        vocab, tokens = encode(source, mode, None)
        return Corpus(tokens, vocab, source, None)
    if corpus is None:
        raise CharLMError(f"the token cache in {cache.folder} could not be read back after writing it")
    return corpus
