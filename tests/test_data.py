"""The token store (charlm.core.corpus), the splits and the blocks the data module serves."""

import json
import sys

import numpy as np
import pytest
import torch

from charlm.core.corpus import TokenCache, encode, load_corpus, resolve_path
from charlm.core.errors import CharLMError
from charlm.core.run_config import DataConfig
from charlm.core.vocab import Vocabulary
from charlm.inference.blocks import RandomBlockSampler, evaluation_offsets, shortest_text, split_bounds
from charlm.training.data import CharDataModule

SHAKESPEARE = resolve_path(None).read_text(encoding="utf-8")


def test_shipped_corpus_is_tiny_shakespeare():
    assert len(SHAKESPEARE.encode("utf-8")) == 1_115_394
    assert SHAKESPEARE.startswith("First Citizen:")


def test_tokens_are_the_text_in_its_sorted_vocabulary(tmp_path):
    corpus = load_corpus(None, "chars", tmp_path)
    assert list(corpus.vocab.chars) == sorted(set(SHAKESPEARE)) and len(corpus.vocab) == 65
    assert isinstance(corpus.tokens, np.memmap) and corpus.tokens.dtype == np.uint8
    assert corpus.vocab.decode(corpus.tokens[:5000].tolist()) == SHAKESPEARE[:5000]
    assert len(corpus.tokens) == len(SHAKESPEARE)


def test_vectorised_encoding_matches_a_plain_python_reference(tmp_path):
    rng = np.random.default_rng(0)
    alphabet = "abc XYZ\né€中文🌹\u0301" + "".join(map(chr, range(0x400, 0x400 + 300)))  # 300+ symbols: uint16 ids
    text = "".join(rng.choice(list(alphabet), size=20_000))
    path = tmp_path / "mixed.txt"
    path.write_text(text, encoding="utf-8")
    corpus = load_corpus(str(path), "chars", tmp_path / "cache")
    reference = {ch: i for i, ch in enumerate(sorted(set(text)))}
    assert corpus.tokens.dtype == np.uint16
    assert corpus.tokens.tolist() == [reference[ch] for ch in text]


def test_bytes_vocabulary_reads_any_file_and_decodes_utf8(tmp_path):
    blob = tmp_path / "blob.bin"
    data = bytes(range(256)) * 3 + "Ça va, 你好".encode()
    blob.write_bytes(data)
    corpus = load_corpus(str(blob), "bytes", tmp_path / "cache")
    assert corpus.vocab == Vocabulary.bytes() and bytes(corpus.tokens.tolist()) == data
    assert corpus.vocab.decode(list("Ça va, 你好".encode())) == "Ça va, 你好"
    assert corpus.vocab.decode([0xE4, 0xBD]) == "\ufffd"  # an incomplete character: a replacement
    stream = corpus.vocab.streaming_decoder()
    assert "".join(stream(b) for b in "你好".encode()) == "你好"


def test_text_that_is_not_utf8_names_the_bytes_vocabulary(tmp_path):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café crème\n".encode("latin-1") * 100)
    with pytest.raises(CharLMError, match=r"not UTF-8 text: .* \(invalid byte at offset 3\); data.vocab=bytes"):
        load_corpus(str(latin), "chars", tmp_path / "cache")


def test_a_cached_corpus_is_reused_and_a_changed_one_encoded_again(tmp_path, monkeypatch):
    path, cache = tmp_path / "t.txt", tmp_path / "cache"
    path.write_text("hello world\n" * 50)
    first = load_corpus(str(path), "chars", cache)
    calls = []
    monkeypatch.setattr("charlm.core.corpus.encode", lambda *a: calls.append(a) or encode(*a))
    again = load_corpus(str(path), "chars", cache)
    assert calls == [] and again.cache_file == first.cache_file
    path.write_text("goodbye moon\n" * 50)  # edited between runs
    changed = load_corpus(str(path), "chars", cache)
    assert len(calls) == 1 and changed.vocab.decode(changed.tokens[:12].tolist()) == "goodbye moon"


@pytest.mark.parametrize("damage", ["truncated tokens", "no .json (a half-written cache)", "corrupt .json"])
def test_a_damaged_cache_is_rebuilt_never_used(tmp_path, damage):
    path, cache = tmp_path / "t.txt", tmp_path / "cache"
    path.write_text("to be or not to be\n" * 40)
    corpus = load_corpus(str(path), "chars", cache)
    tokens_file = corpus.cache_file
    meta_file = tokens_file.with_suffix(".json")
    del corpus
    if damage == "truncated tokens":
        tokens_file.write_bytes(tokens_file.read_bytes()[:100])
    elif damage.startswith("no .json"):
        meta_file.unlink()
    else:
        meta_file.write_text('{"format": "charlm-tok')
    rebuilt = load_corpus(str(path), "chars", cache)
    assert rebuilt.vocab.decode(rebuilt.tokens.tolist()) == path.read_text()
    assert json.loads(meta_file.read_text())["count"] == len(path.read_text())


def test_an_unwritable_cache_folder_falls_back_to_memory_with_a_warning(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    path = tmp_path / "t.txt"
    path.write_text("abc\n" * 100)
    corpus = load_corpus(str(path), "chars", blocker / "cache")
    assert corpus.cache_file is None and corpus.vocab.decode(corpus.tokens.tolist()) == path.read_text()
    assert "warning: cannot write the token cache" in capsys.readouterr().err


def test_the_cache_index_finds_a_corpus_without_reading_it(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdef\n" * 100)
    load_corpus(str(path), "chars", tmp_path / "cache")
    cache = TokenCache(tmp_path / "cache")
    assert cache.known_key(path, "chars", path.stat()) is not None
    assert cache.known_key(path, "bytes", path.stat()) is None  # keyed by vocabulary mode too


def test_splits_are_train_then_validation_then_test():
    assert split_bounds(1000, 0.9) == {"train": (0, 900), "val": (900, 1000), "test": (1000, 1000)}
    assert split_bounds(1000, 0.9, 0.05) == {"train": (0, 900), "val": (900, 950), "test": (950, 1000)}
    for need, train, test in [(17, 0.9, 0.0), (33, 0.9, 0.05), (9, 0.5, 0.25)]:
        n = shortest_text(need, train, test)
        sizes = [end - start for name, (start, end) in split_bounds(n, train, test).items() if name != "test" or test]
        smaller = [end - start for name, (start, end) in split_bounds(n - 1, train, test).items()
                   if name != "test" or test]
        assert min(sizes) >= need and min(smaller) < need


def test_the_validation_budget_spreads_a_fixed_subset_over_the_split():
    assert evaluation_offsets(101, 10).tolist() == list(range(0, 100, 10))  # small: every block
    starts = evaluation_offsets(1_000_001, 100, max_tokens=10_000)
    assert len(starts) == 100 and starts[0] == 0 and starts[-1] == 999_900  # first to last block
    assert np.all(starts % 100 == 0) and np.all(np.diff(starts) > 0)
    assert starts.tolist() == evaluation_offsets(1_000_001, 100, max_tokens=10_000).tolist()  # the same every time


def test_training_blocks_are_windows_of_the_train_text_with_next_character_targets():
    dm = CharDataModule(DataConfig(block_size=8, batch_size=4, num_batches=3, seed=1))
    dm.setup()
    loader = dm.train_dataloader()
    train_text = SHAKESPEARE[: int(len(SHAKESPEARE) * 0.9)]
    batches = list(loader)
    assert len(batches) == 3
    for offsets, (inputs, targets) in zip(loader.sampler, batches, strict=True):
        assert inputs.shape == targets.shape == (4, 8) and inputs.dtype == torch.long
        for offset, row_in, row_t in zip(offsets, inputs, targets, strict=True):
            assert dm.vocab.decode(row_in.tolist()) == train_text[offset : offset + 8]
            assert dm.vocab.decode(row_t.tolist()) == train_text[offset + 1 : offset + 9]


def test_training_batches_depend_only_on_seed_epoch_and_index():
    a = list(RandomBlockSampler(1000, 4, 5, seed=7))
    b = list(RandomBlockSampler(1000, 4, 5, seed=7))
    c = list(RandomBlockSampler(1000, 4, 5, seed=8))
    assert a == b and a != c
    other_epoch = RandomBlockSampler(1000, 4, 5, seed=7)
    other_epoch.set_epoch(1)
    assert list(other_epoch) != a
    assert all(0 <= offset < 1000 for batch in a for offset in batch)


def test_validation_blocks_cover_the_split_in_order():
    dm = CharDataModule(DataConfig(block_size=32, batch_size=4, eval_batch_size=100))
    dm.setup()
    inputs = torch.cat([x for x, _ in dm.val_dataloader()])
    targets = torch.cat([y for _, y in dm.val_dataloader()])
    n = (len(dm.val_ids) - 1) // 32
    assert inputs.shape == (n, 32) and n == 3485  # all of Tiny Shakespeare's validation text
    assert np.array_equal(inputs.flatten().numpy(), dm.val_ids[: n * 32])
    assert np.array_equal(targets.flatten().numpy(), dm.val_ids[1 : n * 32 + 1])


def test_memory_does_not_hold_the_corpus(tmp_path):
    """The data module keeps memory maps of the cache, not copies of the text."""
    dm = CharDataModule(DataConfig(block_size=8, test_fraction=0.05, cache_dir=str(tmp_path)))
    dm.setup()
    for split in dm.splits.values():
        assert isinstance(split, np.memmap)
    assert sum(len(s) for s in dm.splits.values()) == len(SHAKESPEARE) and sys.getsizeof(dm.splits["train"]) < 1000


def test_the_data_benchmark_encodes_like_nanogpt(tmp_path):
    """The benchmark's baseline and the token store agree on the corpus they time (a non-ASCII one)."""
    from charlm.tools.bench_data import make_corpus, nanogpt_encode, store_load

    corpus = tmp_path / "corpus.txt"
    assert make_corpus(corpus, 2) <= 2_000_000
    text = corpus.read_text(encoding="utf-8")
    assert "你好" in text and text.startswith("First Citizen:")
    _, _, ours = store_load(str(corpus), str(tmp_path / "cache"))
    _, _, theirs = nanogpt_encode(str(corpus))
    assert ours == theirs == len(text)


def test_a_disk_that_fills_while_caching_leaves_no_cache_to_trust(tmp_path, monkeypatch, capsys):
    path, cache = tmp_path / "t.txt", tmp_path / "cache"
    path.write_text("abc\n" * 1000)
    real_encode = encode

    def full_disk(source, mode, out):
        if out is not None:
            out.write_bytes(b"\x00" * 10)  # part of the tokens, then the disk is full
            raise OSError(28, "No space left on device")
        return real_encode(source, mode, out)

    monkeypatch.setattr("charlm.core.corpus.encode", full_disk)
    corpus = load_corpus(str(path), "chars", cache)
    assert corpus.cache_file is None and corpus.vocab.decode(corpus.tokens.tolist()) == path.read_text()
    assert "No space left on device" in capsys.readouterr().err
    assert [p.name for p in cache.iterdir()] == []  # no half file under any name
    monkeypatch.undo()
    assert load_corpus(str(path), "chars", cache).cache_file is not None  # the next run caches it


def test_splits_too_small_or_leaving_no_validation_text_are_refused(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("to be or not to be\n" * 20)  # 380 characters
    with pytest.raises(CharLMError, match=r"too short: 380 characters; .* needs at least 17, so the file needs"):
        settings = DataConfig(path=str(path), block_size=16, test_fraction=0.02, cache_dir=str(tmp_path / "c"))
        CharDataModule(settings).setup()
    with pytest.raises(CharLMError, match=r"must be below 1: validation needs the rest"):
        DataConfig(path=str(path), train_fraction=0.9, test_fraction=0.1)
