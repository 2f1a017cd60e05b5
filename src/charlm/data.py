"""The train/validation/test split of a corpus's tokens and the LightningDataModule serving blocks."""

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from charlm.corpus import ids_in, load_corpus, resolve_path
from charlm.errors import CharLMError
from charlm.vocab import Vocabulary

SPLITS = ("train", "val", "test")


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
        return blocks[:, :-1], blocks[:, 1:]


def evaluation_offsets(length: int, block_size: int, max_tokens: int | None = None) -> np.ndarray:
    """Starts of consecutive non-overlapping blocks covering a split, in order; with `max_tokens`, at
    most that many tokens' worth of them, spread evenly over the whole split (the same every time)."""
    count = (length - 1) // block_size
    starts = np.arange(count) * block_size
    if max_tokens is not None and count * block_size > max_tokens:
        keep = max(1, max_tokens // block_size)
        starts = starts[np.linspace(0, count - 1, keep).round().astype(np.int64)]
    return starts


class CharDataModule(L.LightningDataModule):
    def __init__(
        self,
        path: str | None = None,
        vocab: str = "chars",
        block_size: int = 32,
        batch_size: int = 16,
        eval_batch_size: int = 256,
        train_fraction: float = 0.9,
        test_fraction: float = 0.0,
        max_val_tokens: int | None = 1_000_000,
        num_batches: int = 5000,
        num_workers: int = 0,
        seed: int = 1337,
        cache_dir: str | None = None,
        fixed_vocab: str | None = None,
    ):
        super().__init__()
        for name, value in [("block_size", block_size), ("batch_size", batch_size),
                            ("eval_batch_size", eval_batch_size), ("num_batches", num_batches)]:
            if value < 1:
                raise CharLMError(f"{name} must be a positive integer, got {value}")
        if not 0 < train_fraction < 1 or not 0 <= test_fraction < 1 or train_fraction + test_fraction >= 1:
            raise CharLMError(f"data.train_fraction ({train_fraction}) and data.test_fraction ({test_fraction}) "
                              "must leave text for validation: both in [0, 1), train above 0, their sum below 1")
        if num_workers < 0:
            raise CharLMError(f"data.num_workers must be 0 or more, got {num_workers}")
        # In checkpoints, under one key (the model's own "vocab" is its symbols): evaluate.py reads it.
        self.save_hyperparameters({"data": {"path": path, "vocab": vocab, "train_fraction": train_fraction,
                                            "test_fraction": test_fraction, "cache_dir": cache_dir}}, logger=False)
        self.path = path
        self.vocab_mode = vocab
        self.block_size = block_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.train_fraction = train_fraction
        self.test_fraction = test_fraction
        self.max_val_tokens = max_val_tokens
        self.num_batches = num_batches
        self.num_workers = num_workers
        self.seed = seed
        self.cache_dir = cache_dir
        self.fixed_vocab = fixed_vocab
        self.vocab: Vocabulary | None = None
        self.prepared = False

    def setup(self, stage: str | None = None) -> None:
        if self.prepared:
            return
        corpus = load_corpus(self.path, self.vocab_mode, self.cache_dir)
        tokens, self.vocab = corpus.tokens, corpus.vocab
        if self.fixed_vocab is not None:  # fine-tuning: the checkpoint's vocabulary
            self.vocab = Vocabulary(self.fixed_vocab, self.vocab_mode)
            tokens = ids_in(tokens, corpus.vocab, self.vocab, str(resolve_path(self.path)))
        need = self.block_size + 1
        self.splits = {name: tokens[start:end] for name, (start, end) in
                       split_bounds(len(tokens), self.train_fraction, self.test_fraction).items()}
        short = [name for name in ("train", "val") if len(self.splits[name]) < need]
        short += ["test"] if self.test_fraction and len(self.splits["test"]) < need else []
        if short:
            raise CharLMError(
                f"data file {resolve_path(self.path)} is too short: {len(tokens)} {self.unit()}; with "
                f"block_size={self.block_size} each split needs at least {need}, so the file needs at least "
                f"{shortest_text(need, self.train_fraction, self.test_fraction)} (or lower block_size)")
        self.prepared = True

    def unit(self) -> str:
        return "bytes" if self.vocab_mode == "bytes" else "characters"

    @property
    def train_ids(self) -> np.ndarray:
        return self.splits["train"]

    @property
    def val_ids(self) -> np.ndarray:
        return self.splits["val"]

    def process_slot(self) -> tuple[int, int]:
        """(rank, world size) of this process; (0, 1) outside a distributed run."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def batches_done(self) -> int:
        """Batches of the current epoch already trained: nonzero when resuming from a checkpoint.
        (Lightning restores the step count before it asks for the training loader.)"""
        trainer = self.trainer
        return trainer.global_step * trainer.accumulate_grad_batches % self.num_batches if trainer else 0

    # The trainer runs with use_distributed_sampler=False: these loaders shard the data themselves.
    def train_dataloader(self) -> DataLoader:
        dataset = BlockDataset(self.train_ids, self.block_size)
        sampler = RandomBlockSampler(len(dataset), self.batch_size, self.num_batches, self.seed,
                                     *self.process_slot(), start=self.batches_done())
        # batch_size=None: the sampler already yields whole batches, fetched with one indexing op.
        return DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
                          generator=self.own_generator())

    def val_dataloader(self) -> DataLoader:
        return self.evaluation_loader("val", self.max_val_tokens)

    def evaluation_loader(self, split: str, max_tokens: int | None) -> DataLoader:
        """Non-overlapping blocks of a held-out split, in order, each exactly once across processes."""
        ids = self.splits[split]
        starts = evaluation_offsets(len(ids), self.block_size, max_tokens)
        rank, world_size = self.process_slot()
        mine = starts[rank::world_size]
        batches = [mine[i : i + self.eval_batch_size].tolist() for i in range(0, len(mine), self.eval_batch_size)]
        return DataLoader(BlockDataset(ids, self.block_size), batch_size=None, sampler=batches,
                          generator=self.own_generator())

    def own_generator(self) -> torch.Generator:
        """Every DataLoader iterator draws a seed; from its own generator it leaves the global random
        state (dropout) alone, so a resumed run continues exactly where the interrupted one was."""
        return torch.Generator().manual_seed(self.seed)
