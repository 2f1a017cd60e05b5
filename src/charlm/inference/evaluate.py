"""`evaluate.py`'s work: a trained model's loss on a held-out split, in nats per character and bits.

Block scoring cuts the split into consecutive non-overlapping blocks of block_size, as validation
during training does, so on the validation split it gives the run's own val/loss. Sliding-window
scoring (stride=S) moves a block_size window S characters at a time and scores each character once,
with up to block_size characters of context: a lower, context-rich number, reported separately.
"""

import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from charlm.core.corpus import ids_in, load_corpus, resolve_path
from charlm.core.errors import CharLMError
from charlm.core.inference_config import EvaluateConfig, scoring_blocks
from charlm.core.run_config import DataConfig, group_settings
from charlm.core.run_folder import find_checkpoint, newest_run
from charlm.core.sweep import job_label
from charlm.inference.blocks import RECORDED, BlockDataset, evaluation_offsets, split_bounds
from charlm.inference.checkpoint import load_model
from charlm.inference.torch_runner import check_device


def windows(length: int, block_size: int, stride: int | None) -> list[tuple[int, int]]:
    """(start, first scored position) of each window over `length` targets. Without a stride, the
    non-overlapping blocks; with one, windows S apart that together score every target exactly once."""
    if stride is None:
        return [(int(start), 0) for start in evaluation_offsets(length + 1, block_size)]
    if length < block_size:
        raise CharLMError(f"the split has {length} characters to score, fewer than one block of {block_size}")
    spans, scored_to = [(0, 0)], block_size
    for start in range(stride, length - block_size + 1, stride):
        spans.append((start, scored_to - start))
        scored_to = start + block_size
    if scored_to < length:  # the tail: one last window that ends at the split's end
        start = length - block_size
        spans.append((start, scored_to - start))
    return spans


@torch.inference_mode()
def score(model: nn.Module, ids: np.ndarray, block_size: int, stride: int | None = None,
          batch_size: int | None = None, device: str = "cpu", progress: bool = False) -> tuple[float, int]:
    """(summed loss in nats, characters scored) of `ids` under `model`, `batch_size` blocks at a time
    (None: charlm.core.inference_config.scoring_blocks)."""
    spans = windows(len(ids) - 1, block_size, stride)
    batch_size = scoring_blocks(batch_size, block_size)
    dataset = BlockDataset(ids, block_size)
    total, count = 0.0, 0
    # None: a bar on a terminal only; a log file (SLURM's, a pipe) would collect every redraw
    bar = tqdm(total=len(spans), unit="block", disable=None if progress else True, file=sys.stderr, leave=False)
    for i in range(0, len(spans), batch_size):
        batch = spans[i : i + batch_size]
        inputs, targets = dataset[[start for start, _ in batch]]  # (B, T) each
        logits = model(inputs.to(device)).float()  # (B, T, V)
        losses = F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten(), reduction="none")
        losses = losses.view(len(batch), block_size)
        for row, (_, first) in enumerate(batch):
            total += losses[row, first:].double().sum().item()
            count += block_size - first
        bar.update(len(batch))
    bar.close()
    return total, count


def data_settings(recorded: dict | None, overrides: dict) -> dict:
    """The data a run was trained on, as its checkpoint recorded it, with the caller's changes (None:
    keep the recorded value)."""
    defaults = DataConfig()  # what a run's data settings were where its checkpoint does not say (exports)
    settings = {key: getattr(defaults, key) for key in RECORDED}
    if recorded:
        settings |= {key: recorded[key] for key in RECORDED if key in recorded}
    settings |= {key: value for key, value in overrides.items() if value is not None}
    DataConfig(**settings)  # checked as train.py checks them: validation must keep some text
    return settings


def split_ids(loaded, data: dict, split: str, other_text: str = "data.path=PATH") -> tuple[np.ndarray, Path]:
    """A model's token ids of one split of its text (train/val/test as `data` cuts them), and the
    text's path; a text the model cannot read, a missing split or one shorter than a block is a
    CharLMError (`other_text`: how the caller's command names another text)."""
    try:
        corpus = load_corpus(data["path"], data["vocab"], data["cache_dir"])
    except CharLMError as err:
        if resolve_path(data["path"]).exists():
            raise
        raise CharLMError(f"{err}; give the text with {other_text}") from None  # moved since the run recorded it
    if corpus.vocab.mode != loaded.vocab.mode:
        raise CharLMError(f"{resolve_path(data['path'])} read as {data['vocab']} gives another vocabulary "
                          f"({corpus.vocab.describe()}) than the model's ({loaded.vocab.describe()}); give the "
                          "text and data.vocab the model was trained on")
    if split == "test" and not data["test_fraction"]:
        raise CharLMError("this run has no test split (data.test_fraction was 0); score split=val, or give "
                          "data.test_fraction=F to cut one from the text")
    trained = loaded.data or {}  # the run's own text and cut, where its checkpoint records them
    first = data["train_fraction"] if split == "val" else 1 - data["test_fraction"]
    if trained and resolve_path(trained["path"]) == corpus.source and first < trained["train_fraction"]:
        raise CharLMError(f"that {split} split starts {first:.0%} into {corpus.source}, inside the first "
                          f"{trained['train_fraction']:.0%} this run trained on; held-out text starts there or later")
    start, end = split_bounds(len(corpus.tokens), data["train_fraction"], data["test_fraction"])[split]
    ids = ids_in(corpus.tokens[start:end], corpus.vocab, loaded.vocab, str(corpus.source),
                 f"; give the text the model was trained on with {other_text}")  # fine-tuned: its text's subset
    block_size = loaded.model.block_size
    if len(ids) < block_size + 1:
        raise CharLMError(f"the {split} split of {corpus.source} has {len(ids)} characters, fewer than one block "
                          f"of {block_size} + 1")
    return ids, corpus.source


def evaluate(cfg: DictConfig) -> dict:
    cfg = group_settings(EvaluateConfig, cfg)  # every option checked
    check_device("device", cfg.device)
    file = find_checkpoint(cfg.ckpt if cfg.ckpt is not None else newest_run(Path(cfg.paths["root"]) / "runs"))
    loaded = load_model(file)
    ids, source = split_ids(loaded, data_settings(loaded.data, asdict(cfg.data)), cfg.split)
    block_size = loaded.model.block_size
    if cfg.stride is not None and cfg.stride > block_size:
        raise CharLMError(f"stride must be at most block_size ({block_size}), got {cfg.stride}")
    model = loaded.model.to(cfg.device)
    job = job_label()  # in a sweep (-m): which of its scores this is
    print(f"scoring {file} on the {cfg.split} split of {source} ({len(ids):,} tokens)" + (f"; {job}" if job else ""),
          file=sys.stderr)
    results = {"checkpoint": str(file), "split": cfg.split, "tokens": len(ids)}
    unit, units = ("byte", "bytes") if loaded.vocab.mode == "bytes" else ("char", "characters")  # bpc: per either
    for name, stride in [("blocks", None)] + ([("sliding", cfg.stride)] if cfg.stride else []):
        began = time.perf_counter()
        total, count = score(model, ids, block_size, stride, cfg.batch_size, cfg.device, progress=True)
        seconds = time.perf_counter() - began
        loss = total / count
        results[name] = {"loss": loss, "bpc": loss / math.log(2), "scored": count, "seconds": seconds}
        how = f"blocks of {block_size}" if stride is None else f"windows of {block_size}, stride {stride}"
        print(f"{cfg.split} {name}: loss {loss:.4f} nats/{unit}, {loss / math.log(2):.4f} bpc over {count:,} "
              f"{units} ({how}; {count / seconds:,.0f} {units}/s)")
    return results


