"""A corpus's token ids cut into train/validation/test splits and served as blocks: what training and
evaluation share. Torch without Lightning, so evaluate.py and quantize load no trainer."""

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, SequentialSampler

RECORDED = ("path", "vocab", "train_fraction", "test_fraction", "cache_dir")  # which text, cut how: in checkpoints


def split_bounds(length: int, train_fraction: float, test_fraction: float = 0.0) -> dict[str, tuple[int, int]]:
    """Train first, then validation, then test, each one contiguous cut (no shuffling: held-out text
    is unseen text). Fractions of the token count; validation gets what the other two leave."""
    train_end = int(length * train_fraction)
    test_start = length - int(length * test_fraction)
    return {"train": (0, train_end), "val": (train_end, test_start), "test": (test_start, length)}


def shortest_text(need: int, train_fraction: float, test_fraction: float = 0.0) -> int:
    """The fewest tokens whose split leaves at least `need` in each split there is."""
    held_out = 1 - train_fraction - test_fraction
    fractions = [f for f in (train_fraction, held_out, test_fraction) if f > 0]
    length = max(need, int((need - 1) / max(fractions)))  # a lower bound, searched up from
    while True:
        bounds = split_bounds(length, train_fraction, test_fraction)
        if all(end - start >= need for name, (start, end) in bounds.items() if name != "test" or test_fraction):
            return length
        length += 1


class RandomBlockSampler(Sampler[list[int]]):
    """Yields batches of random block offsets; batch i of epoch e depends only on (seed, e, i).

    That makes the stream reproducible and lets a resumed run draw the same batches. Under data
    parallelism each step draws one global batch of `batch_size * world_size` offsets and process
    `rank` takes its own slice, so N processes see exactly the batch one process would see with
    N times the batch size.
    """

    def __init__(self, num_offsets: int, batch_size: int, num_batches: int, seed: int,
                 rank: int = 0, world_size: int = 1, start: int = 0):
        self.num_offsets = num_offsets
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start  # first batch of the first pass: a resumed run skips what it already trained on
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at each epoch start
        self.epoch = epoch

    def __len__(self) -> int:
        # The whole epoch, also when resuming: Lightning counts the restored batches against it.
        return self.num_batches

    def __iter__(self):
        generator = torch.Generator()
        first, self.start = self.start, 0
        for i in range(first, self.num_batches):
            generator.manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + i) % 2**63)
            offsets = torch.randint(self.num_offsets, (self.batch_size * self.world_size,), generator=generator)
            yield offsets[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].tolist()


class InOrder(SequentialSampler):
    """Whole batches of block offsets, in the same order every epoch: a list of them, or a
    RandomBlockSampler, whose epoch then stays 0. A SequentialSampler, so that Lightning's overfit mode
    (`trainer.overfit_batches`), which turns any other sampler into one of single offsets, keeps it."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BlockDataset(Dataset):
    """Blocks of `block_size` input ids and the next-character targets, fetched a batch at a time from
    (memory-mapped) ids: only the rows asked for are read."""

    def __init__(self, ids: np.ndarray, block_size: int):
        self.ids = ids
        self.window = np.arange(block_size + 1)

    def __len__(self) -> int:
        return len(self.ids) - len(self.window) + 1  # number of valid start offsets

    def __getitem__(self, offsets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = torch.from_numpy(self.ids[np.asarray(offsets)[:, None] + self.window].astype(np.int64))  # (B, T+1)
        # contiguous: a compiled model sees the strides it was compiled for, and does not recompile
        return blocks[:, :-1].contiguous(), blocks[:, 1:].contiguous()


def evaluation_offsets(length: int, block_size: int, max_tokens: int | None = None) -> np.ndarray:
    """Starts of consecutive non-overlapping blocks covering a split, in order; with `max_tokens`, at
    most that many tokens' worth of them, spread evenly over the whole split (the same every time)."""
    count = (length - 1) // block_size
    starts = np.arange(count) * block_size
    if max_tokens is not None and count * block_size > max_tokens:
        keep = max(1, max_tokens // block_size)
        starts = starts[np.linspace(0, count - 1, keep).round().astype(np.int64)]
    return starts


