"""The data module (charlm.training.data): training and validation blocks of the real corpus."""

import re
import sys

import numpy as np
import pytest
import torch
from conftest import TINY

from charlm.core.corpus import resolve_path
from charlm.core.errors import CharLMError
from charlm.core.inference_config import scoring_blocks
from charlm.core.run_config import DataConfig
from charlm.training.data import CharDataModule

SHAKESPEARE = resolve_path(None).read_text(encoding="utf-8")


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


def test_validation_blocks_cover_the_split_in_order():
    dm = CharDataModule(DataConfig(block_size=32, batch_size=4, eval_batch_size=100))
    dm.setup()
    inputs = torch.cat([x for x, _ in dm.val_dataloader()])
    targets = torch.cat([y for _, y in dm.val_dataloader()])
    n = (len(dm.val_ids) - 1) // 32
    assert inputs.shape == (n, 32) and n == 3485  # all of Tiny Shakespeare's validation text
    assert np.array_equal(inputs.flatten().numpy(), dm.val_ids[: n * 32])
    assert np.array_equal(targets.flatten().numpy(), dm.val_ids[1 : n * 32 + 1])


def test_validation_batches_hold_a_few_thousand_tokens_unless_sized():
    assert [scoring_blocks(None, block_size) for block_size in (32, 128, 5000)] == [128, 32, 1]
    for eval_batch_size, size in [(None, 32), (7, 7)]:
        dm = CharDataModule(DataConfig(block_size=128, eval_batch_size=eval_batch_size))
        dm.setup()
        sizes = [len(inputs) for inputs, _ in dm.val_dataloader()]
        assert set(sizes[:-1]) == {size} and sum(sizes) == (len(dm.val_ids) - 1) // 128


def test_memory_does_not_hold_the_corpus(tmp_path):
    """The data module keeps memory maps of the cache, not copies of the text."""
    dm = CharDataModule(DataConfig(block_size=8, test_fraction=0.05, cache_dir=str(tmp_path)))
    dm.setup()
    for split in dm.splits.values():
        assert isinstance(split, np.memmap)
    assert sum(len(s) for s in dm.splits.values()) == len(SHAKESPEARE) and sys.getsizeof(dm.splits["train"]) < 1000


def test_splits_too_small_or_leaving_no_validation_text_are_refused(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("to be or not to be\n" * 20)  # 380 characters
    with pytest.raises(CharLMError, match=r"too short: 380 characters; .* needs at least 17, so the file needs"):
        settings = DataConfig(path=str(path), block_size=16, test_fraction=0.02, cache_dir=str(tmp_path / "c"))
        CharDataModule(settings).setup()
    with pytest.raises(CharLMError, match=r"must be below 1: validation needs the rest"):
        DataConfig(path=str(path), train_fraction=0.9, test_fraction=0.1)


def test_lightnings_overfit_mode_trains_on_the_same_batches_every_epoch(train_here, capsys):
    """`+trainer.overfit_batches=1` (the Lightning + Hydra template's `debug=overfit`): Lightning keeps
    these loaders, which already serve fixed batches in order, and one batch of 256 tokens, seen 100
    times, is learned by heart while the (one-batch) validation stays near chance."""
    train_here(*TINY, "+trainer.overfit_batches=1", "max_steps=100", "eval_interval=100", "lr=1e-2")
    train, val = map(float, re.search(r"final train/loss (\S+), val/loss (\S+),", capsys.readouterr().out).groups())
    assert train < 1.0 < 3.0 < val
