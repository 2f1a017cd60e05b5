"""Text loading, the train/validation split and the LightningDataModule serving character blocks."""

from importlib import resources
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from charlm.errors import CharLMError
from charlm.vocab import Vocabulary

TINY_SHAKESPEARE = "tinyshakespeare"


def resolve_path(path: str | None) -> Path:
    """`None` or "tinyshakespeare" means the corpus shipped inside the package."""
    if path is None or path == TINY_SHAKESPEARE:
        return Path(str(resources.files("charlm") / "corpora" / "tinyshakespeare.txt"))
    return Path(path).expanduser()


def read_text(path: str | None) -> str:
    """Read a UTF-8 text file, turning every way it can be unusable into a CharLMError."""
    file = resolve_path(path)
    if not file.exists():
        raise CharLMError(f"data file not found: {file}")
    if file.is_dir():
        raise CharLMError(f"data path is a directory, not a text file: {file}")
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise CharLMError(f"cannot read data file {file}: {err.strerror}") from None
    if not raw:
        raise CharLMError(f"data file is empty: {file}")
    if b"\x00" in raw:
        raise CharLMError(f"data file looks binary (it contains NUL bytes), not text: {file}")
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark is not part of the text
    except UnicodeDecodeError as err:
        raise CharLMError(
            f"data file is not UTF-8 text: {file} (invalid byte at offset {err.start})"
        ) from None


def split_text(text: str, train_fraction: float) -> tuple[str, str]:
    """Train first, validation last, as one cut (no shuffling: validation text is unseen text)."""
    cut = int(len(text) * train_fraction)
    return text[:cut], text[cut:]


def shortest_text(need: int, train_fraction: float) -> int:
    """The fewest characters whose split (split_text) leaves at least `need` on each side."""
    # a lower bound: the cut is int(length * train_fraction), so the training side needs
    # length >= need / f, and the validation side length > (need - 1) / (1 - f)
    length = max(need, int(max(need / train_fraction, (need - 1) / (1 - train_fraction))))
    while True:
        train, val = split_text(" " * length, train_fraction)
        if len(train) >= need and len(val) >= need:
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
    """Blocks of `block_size` input ids and the next-character targets, fetched a batch at a time."""

    def __init__(self, ids: torch.Tensor, block_size: int):
        self.ids = ids
        self.window = torch.arange(block_size + 1)

    def __len__(self) -> int:
        return len(self.ids) - len(self.window) + 1  # number of valid start offsets

    def __getitem__(self, offsets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = self.ids[torch.as_tensor(offsets)[:, None] + self.window].long()  # (B, T+1)
        return blocks[:, :-1], blocks[:, 1:]


def validation_blocks(ids: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive non-overlapping blocks covering the whole validation split, in order."""
    n = (len(ids) - 1) // block_size
    inputs = ids[: n * block_size].long().view(n, block_size)  # (N, T)
    targets = ids[1 : n * block_size + 1].long().view(n, block_size)  # (N, T)
    return inputs, targets


class CharDataModule(L.LightningDataModule):
    def __init__(
        self,
        path: str | None = None,
        block_size: int = 32,
        batch_size: int = 16,
        eval_batch_size: int = 256,
        train_fraction: float = 0.9,
        num_batches: int = 5000,
        num_workers: int = 0,
        seed: int = 1337,
        vocab: str | None = None,
    ):
        super().__init__()
        for name, value in [("block_size", block_size), ("batch_size", batch_size),
                            ("eval_batch_size", eval_batch_size), ("num_batches", num_batches)]:
            if value < 1:
                raise CharLMError(f"{name} must be a positive integer, got {value}")
        if not 0 < train_fraction < 1:
            raise CharLMError(f"data.train_fraction must be between 0 and 1, got {train_fraction}")
        if num_workers < 0:
            raise CharLMError(f"data.num_workers must be 0 or more, got {num_workers}")
        self.path = path
        self.block_size = block_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.train_fraction = train_fraction
        self.num_batches = num_batches
        self.num_workers = num_workers
        self.seed = seed
        self.fixed_vocab = vocab
        self.vocab: Vocabulary | None = None
        self.prepared = False

    def setup(self, stage: str | None = None) -> None:
        if self.prepared:
            return
        text = read_text(self.path)
        self.vocab = Vocabulary(self.fixed_vocab) if self.fixed_vocab else Vocabulary.from_text(text)
        if missing := self.vocab.unknown(text):
            raise CharLMError(f"{resolve_path(self.path)} has characters the model's vocabulary lacks: "
                              + ", ".join(repr(ch) for ch in missing))
        train_text, val_text = split_text(text, self.train_fraction)
        need = self.block_size + 1
        if len(train_text) < need or len(val_text) < need:
            raise CharLMError(
                f"data file {resolve_path(self.path)} is too short: {len(text)} characters; "
                f"with block_size={self.block_size} each split needs at least {need}, "
                f"so the file needs at least {shortest_text(need, self.train_fraction)} (or lower block_size)"
            )
        dtype = torch.uint8 if len(self.vocab) <= 256 else torch.int32
        self.train_ids = torch.tensor(self.vocab.encode(train_text), dtype=dtype)
        self.val_ids = torch.tensor(self.vocab.encode(val_text), dtype=dtype)
        self.prepared = True

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
        inputs, targets = validation_blocks(self.val_ids, self.block_size)
        dataset = torch.utils.data.TensorDataset(inputs, targets)
        rank, world_size = self.process_slot()
        shard = range(rank, len(dataset), world_size)  # every block exactly once across processes
        return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=shard, generator=self.own_generator())

    def own_generator(self) -> torch.Generator:
        """Every DataLoader iterator draws a seed; from its own generator it leaves the global random
        state (dropout) alone, so a resumed run continues exactly where the interrupted one was."""
        return torch.Generator().manual_seed(self.seed)
