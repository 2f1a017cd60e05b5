"""A text's splits and the blocks served from them (charlm.inference.blocks)."""


import numpy as np

from charlm.core.corpus import resolve_path
from charlm.inference.blocks import RandomBlockSampler, evaluation_offsets, shortest_text, split_bounds

SHAKESPEARE = resolve_path(None).read_text(encoding="utf-8")


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


def test_training_batches_depend_only_on_seed_epoch_and_index():
    a = list(RandomBlockSampler(1000, 4, 5, seed=7))
    b = list(RandomBlockSampler(1000, 4, 5, seed=7))
    c = list(RandomBlockSampler(1000, 4, 5, seed=8))
    assert a == b and a != c
    other_epoch = RandomBlockSampler(1000, 4, 5, seed=7)
    other_epoch.set_epoch(1)
    assert list(other_epoch) != a
    assert all(0 <= offset < 1000 for batch in a for offset in batch)
