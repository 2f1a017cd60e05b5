"""The LightningDataModule serving a corpus's splits as blocks (charlm.inference.blocks) for training."""

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from charlm.core.corpus import TINY_SHAKESPEARE, ids_in, load_corpus, resolve_path
from charlm.core.errors import CharLMError
from charlm.core.inference_config import scoring_blocks
from charlm.core.run_config import DataConfig
from charlm.core.vocab import Vocabulary
from charlm.inference.blocks import (
    RECORDED,
    BlockDataset,
    InOrder,
    RandomBlockSampler,
    evaluation_offsets,
    shortest_text,
    split_bounds,
)


class CharDataModule(L.LightningDataModule):
    """Serves a text's splits as blocks, as `settings` (charlm.core.run_config.DataConfig, checked) say;
    `fixed_vocab`: fine-tuning's vocabulary, the checkpoint's."""

    def __init__(self, settings: DataConfig | None = None, fixed_vocab: str | None = None):
        super().__init__()
        settings = settings or DataConfig()
        # In checkpoints, under one key (the model's own "vocab" is its symbols): evaluate.py reads it, from
        # any folder, so relative paths are recorded absolute.
        recorded = {key: getattr(settings, key) for key in RECORDED}
        for key in ("path", "cache_dir"):
            if recorded[key] is not None and recorded[key] != TINY_SHAKESPEARE:
                recorded[key] = str(Path(recorded[key]).expanduser().absolute())
        self.save_hyperparameters({"data": recorded}, logger=False)
        self.settings = settings
        self.fixed_vocab = fixed_vocab
        self.vocab: Vocabulary | None = None
        self.prepared = False

    def setup(self, stage: str | None = None) -> None:
        if self.prepared:
            return
        data = self.settings
        corpus = load_corpus(data.path, data.vocab, data.cache_dir)
        tokens, self.vocab = corpus.tokens, corpus.vocab
        if self.fixed_vocab is not None:  # fine-tuning: the checkpoint's vocabulary
            self.vocab = Vocabulary(self.fixed_vocab, data.vocab)
            tokens = ids_in(tokens, corpus.vocab, self.vocab, str(resolve_path(data.path)))
        need = data.block_size + 1
        self.splits = {name: tokens[start:end] for name, (start, end) in
                       split_bounds(len(tokens), data.train_fraction, data.test_fraction).items()}
        short = [name for name in ("train", "val") if len(self.splits[name]) < need]
        short += ["test"] if data.test_fraction and len(self.splits["test"]) < need else []
        if short:
            raise CharLMError(
                f"data file {resolve_path(data.path)} is too short: {len(tokens)} {self.unit()}; with "
                f"block_size={data.block_size} each split needs at least {need}, so the file needs at least "
                f"{shortest_text(need, data.train_fraction, data.test_fraction)} (or lower block_size)")
        self.prepared = True

    def unit(self) -> str:
        return "bytes" if self.settings.vocab == "bytes" else "characters"

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
        return trainer.global_step * trainer.accumulate_grad_batches % self.settings.num_batches if trainer else 0

    # The trainer runs with use_distributed_sampler=False: these loaders shard the data themselves.
    def train_dataloader(self) -> DataLoader:
        data = self.settings
        dataset = BlockDataset(self.train_ids, data.block_size)
        sampler = RandomBlockSampler(len(dataset), data.batch_size, data.num_batches, data.seed,
                                     *self.process_slot(), start=self.batches_done())
        if self.trainer is not None and self.trainer.overfit_batches > 0:
            sampler = InOrder(sampler)  # the same first batches every epoch: what overfitting them needs
        # batch_size=None: the sampler already yields whole batches, fetched with one indexing op.
        return DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=data.num_workers,
                          persistent_workers=data.num_workers > 0, pin_memory=torch.cuda.is_available(),
                          generator=self.own_generator())

    def val_dataloader(self) -> DataLoader:
        return self.evaluation_loader("val", self.settings.max_val_tokens)

    def evaluation_loader(self, split: str, max_tokens: int | None) -> DataLoader:
        """Non-overlapping blocks of a held-out split, in order, each exactly once across processes."""
        ids = self.splits[split]
        starts = evaluation_offsets(len(ids), self.settings.block_size, max_tokens)
        rank, world_size = self.process_slot()
        mine = starts[rank::world_size]
        size = scoring_blocks(self.settings.eval_batch_size, self.settings.block_size)
        batches = [mine[i : i + size].tolist() for i in range(0, len(mine), size)]
        return DataLoader(BlockDataset(ids, self.settings.block_size), batch_size=None, sampler=InOrder(batches),
                          generator=self.own_generator())

    def own_generator(self) -> torch.Generator:
        """Every DataLoader iterator draws a seed; from its own generator it leaves the global random
        state (dropout) alone, so a resumed run continues exactly where the interrupted one was."""
        return torch.Generator().manual_seed(self.settings.seed)
