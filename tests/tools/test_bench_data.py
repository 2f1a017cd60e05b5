"""The data benchmark (charlm.tools.bench_data)."""



from charlm.core.corpus import resolve_path

SHAKESPEARE = resolve_path(None).read_text(encoding="utf-8")


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
