"""`sample.py`'s work: load a checkpoint and stream generated text to standard output."""

import sys
from pathlib import Path

import torch
from omegaconf import DictConfig

from charlm.checkpoint import load_model
from charlm.errors import CharLMError
from charlm.sampling import generate

RUNS_DIR = Path("outputs/runs")


def newest_run() -> Path:
    runs = sorted((p for p in RUNS_DIR.glob("*") if (p / "checkpoints").is_dir()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise CharLMError(f"no trained run under {RUNS_DIR}; train one with `python train.py` or pass ckpt=...")
    return runs[-1]


def check_sample_config(cfg: DictConfig) -> None:
    if not isinstance(cfg.num_tokens, int) or cfg.num_tokens < 0:
        raise CharLMError(f"num_tokens must be 0 or a positive integer, got {cfg.num_tokens!r}")
    if not isinstance(cfg.num_samples, int) or cfg.num_samples < 1:
        raise CharLMError(f"num_samples must be a positive integer, got {cfg.num_samples!r}")
    if not isinstance(cfg.temperature, (int, float)) or cfg.temperature < 0:
        raise CharLMError(f"temperature must be 0 (greedy) or positive, got {cfg.temperature!r}")
    if cfg.top_k is not None and (not isinstance(cfg.top_k, int) or cfg.top_k < 1):
        raise CharLMError(f"top_k must be a positive integer or null, got {cfg.top_k!r}")
    if cfg.top_p is not None and (not isinstance(cfg.top_p, (int, float)) or not 0 < cfg.top_p <= 1):
        raise CharLMError(f"top_p must be in (0, 1] or null, got {cfg.top_p!r}")
    if not cfg.prompt:
        raise CharLMError("prompt must contain at least one character")


def sample(cfg: DictConfig) -> None:
    check_sample_config(cfg)
    loaded = load_model(cfg.ckpt if cfg.ckpt is not None else newest_run())
    print(f"sampling from {loaded.path}", file=sys.stderr, flush=True)
    prompt_ids = torch.tensor([loaded.vocab.encode(cfg.prompt)] * cfg.num_samples, device=cfg.device)
    model = loaded.model.to(cfg.device)
    generator = torch.Generator(cfg.device)
    if cfg.seed is None:
        generator.seed()
    else:
        generator.manual_seed(cfg.seed)
    steps = generate(model, prompt_ids, cfg.num_tokens, cfg.temperature, cfg.top_k, cfg.top_p, generator)
    out = sys.stdout
    if cfg.num_samples == 1:  # stream character by character
        out.write(cfg.prompt)
        for next_id in steps:
            out.write(loaded.vocab.chars[int(next_id[0])])
            out.flush()
        out.write("\n")
    else:  # one batch; print each sample when all are done
        columns = torch.stack(list(steps), dim=1) if cfg.num_tokens else prompt_ids[:, :0]  # (N, num_tokens)
        for i, row in enumerate(columns.tolist()):
            if i:
                out.write("\n" + "-" * 40 + "\n")
            out.write(cfg.prompt + loaded.vocab.decode(row) + "\n")
    out.flush()
