import torch

from charlm.data import CharDataModule, RandomBlockSampler, read_text, split_text
from charlm.vocab import Vocabulary


def test_shipped_corpus_is_tiny_shakespeare():
    text = read_text("tinyshakespeare")
    assert len(text.encode("utf-8")) == 1_115_394
    assert text.startswith("First Citizen:")


def test_vocabulary_round_trip_and_order():
    text = read_text(None)
    vocab = Vocabulary.from_text(text)
    assert len(vocab) == 65
    assert list(vocab.chars) == sorted(set(text))
    sample = text[:5000]
    assert vocab.decode(vocab.encode(sample)) == sample


def test_split_is_90_10_train_first():
    text = read_text(None)
    train, val = split_text(text, 0.9)
    assert len(train) == int(len(text) * 0.9) == 1_003_854
    assert train + val == text
    assert len(val) == 111_540


def test_training_blocks_are_windows_of_the_train_text_with_next_character_targets():
    dm = CharDataModule(block_size=8, batch_size=4, num_batches=3, seed=1)
    dm.setup()
    loader = dm.train_dataloader()
    train_text, _ = split_text(read_text(None), 0.9)
    batches = list(loader)
    assert len(batches) == 3
    for offsets, (inputs, targets) in zip(loader.sampler, batches, strict=True):
        assert inputs.shape == targets.shape == (4, 8)
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
    dm = CharDataModule(block_size=32, batch_size=4, eval_batch_size=100)
    dm.setup()
    inputs = torch.cat([x for x, _ in dm.val_dataloader()])
    targets = torch.cat([y for _, y in dm.val_dataloader()])
    n = (len(dm.val_ids) - 1) // 32
    assert inputs.shape == (n, 32)
    assert torch.equal(inputs.flatten(), dm.val_ids[: n * 32].long())
    assert torch.equal(targets.flatten(), dm.val_ids[1 : n * 32 + 1].long())
