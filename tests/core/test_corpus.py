"""The token store (charlm.core.corpus): the vocabulary, the encoding, the cache and its failures."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from charlm.core.corpus import TokenCache, content_key, encode, file_times, ids_in, load_corpus, resolve_path
from charlm.core.errors import CharLMError
from charlm.core.vocab import Vocabulary

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


def test_a_mistyped_data_path_gets_the_name_it_was_likely_meant_to_be(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_text.txt").write_text("hello")
    for typed, meant in [("tinyshakespear", "tinyshakespeare, the corpus shipped in the package"),
                         ("my_txt.txt", "my_text.txt"), (f"{tmp_path}/my_tex.txt", f"{tmp_path}/my_text.txt")]:
        with pytest.raises(CharLMError, match=rf"^data file not found: {typed} \(did you mean {meant}\?\)$"):
            load_corpus(typed)
    for typed in ("unrelated.txt", f"{tmp_path}/no/such/folder/my_text.txt"):
        with pytest.raises(CharLMError, match=rf"^data file not found: {typed}$"):
            load_corpus(typed)


def test_text_that_is_not_utf8_names_the_bytes_vocabulary(tmp_path):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café crème\n".encode("latin-1") * 100)
    with pytest.raises(CharLMError, match=r"not UTF-8 text: .* \(invalid byte at offset 3\); data.vocab=bytes"):
        load_corpus(str(latin), "chars", tmp_path / "cache")


def test_characters_a_model_lacks_are_named_and_counted_in_one_line():
    model = Vocabulary("ab")
    assert (model.describe(), Vocabulary("a").describe()) == ("2 characters", "1 character")
    with pytest.raises(CharLMError, match=r"vocabulary: 'c', 'd'$"):
        model.encode("abcd")
    other_script = "".join(map(chr, range(0x4E00, 0x4E00 + 30)))  # a long prompt or text in another script
    first_twenty = ", ".join(map(repr, other_script[:20]))
    with pytest.raises(CharLMError) as error:
        model.encode(other_script)
    assert str(error.value) == f"characters not in the model's vocabulary: {first_twenty} and 10 more"
    with pytest.raises(CharLMError) as error:
        ids_in(np.arange(32), Vocabulary("ab" + other_script), model, "text.txt")
    assert str(error.value) == f"text.txt has characters the model's vocabulary lacks: {first_twenty} and 10 more"


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


def test_same_size_changes_are_seen_in_the_text_and_in_the_cache(tmp_path):
    """What `cp -p`, `rsync -a` and `tar` do (an edit keeping size and modification time), and a tokens
    file overwritten in place with as many bytes: neither is served from the cache."""
    path, cache = tmp_path / "t.txt", tmp_path / "cache"
    path.write_text("hello world\n" * 50)
    first = load_corpus(str(path), "chars", cache)
    kept = path.stat()
    path.write_text("jello world\n" * 50)  # same size
    os.utime(path, ns=(kept.st_atime_ns, kept.st_mtime_ns))  # and the old modification time
    edited = load_corpus(str(path), "chars", cache)
    assert edited.vocab.decode(edited.tokens[:5].tolist()) == "jello"
    edited.cache_file.write_bytes(b"\0" * edited.cache_file.stat().st_size)  # zeros, in place
    again = load_corpus(str(path), "chars", cache)
    assert again.vocab.decode(again.tokens[:5].tolist()) == "jello" and first.cache_file.is_file()


@pytest.mark.parametrize("damage", ["truncated tokens", "no .json (a half-written cache)", "corrupt .json",
                                    "ids outside the vocabulary, times recorded anew"])
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
    elif damage.startswith("ids outside"):
        tokens_file.write_bytes(b"\xff" * tokens_file.stat().st_size)
        meta = json.loads(meta_file.read_text())
        meta_file.write_text(json.dumps(meta | {"tokens_stat": file_times(tokens_file.stat())}))
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
    for cache_dir in (blocker / "cache", blocker):  # below a file, or the file itself
        corpus = load_corpus(str(path), "chars", cache_dir)
        assert corpus.cache_file is None and corpus.vocab.decode(corpus.tokens.tolist()) == path.read_text()
        assert (f"warning: cannot write the token cache in {cache_dir} ({blocker} is a file, not a folder); "
                "encoding into memory instead") in capsys.readouterr().err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_cache_whose_disk_fills_up_falls_back_to_memory_and_is_never_half_used(tmp_path, capsys):
    """The tokens fit, then the .json that publishes them hits a full disk (its temp file a link to /dev/full)."""
    path = tmp_path / "t.txt"
    path.write_text("abc\n" * 100)
    cache = TokenCache(tmp_path / "cache")
    _, meta_file = cache.paths(path, content_key(path), "chars")
    meta_file.parent.mkdir()
    (meta_file.parent / f".{meta_file.name}.{os.getpid()}.tmp").symlink_to("/dev/full")
    corpus = load_corpus(str(path), "chars", cache.folder)
    assert corpus.cache_file is None and corpus.vocab.decode(corpus.tokens.tolist()) == path.read_text()
    assert (f"cannot write the token cache in {cache.folder} (No space left on device); encoding into memory "
            "instead") in capsys.readouterr().err
    assert not meta_file.exists()  # the tokens file without its .json is never taken
    assert load_corpus(str(path), "chars", cache.folder).cache_file is not None  # room again: cached


def test_the_cache_index_finds_a_corpus_without_reading_it(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdef\n" * 100)
    load_corpus(str(path), "chars", tmp_path / "cache")
    cache = TokenCache(tmp_path / "cache")
    assert cache.known_key(path, "chars", path.stat()) is not None
    assert cache.known_key(path, "bytes", path.stat()) is None  # keyed by vocabulary mode too


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
