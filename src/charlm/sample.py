"""`sample.py`'s work: open a model (torch checkpoint, or NumPy export) and stream generated text.

The NumPy backend never imports torch.
"""

import sys
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from charlm.errors import CharLMError
from charlm.generation import generate

BACKENDS = ("torch", "numpy")


def check_sample_config(cfg: DictConfig) -> None:
    if cfg.backend not in BACKENDS:
        raise CharLMError(f"backend must be one of {', '.join(BACKENDS)}, got {cfg.backend!r}")
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
    if not isinstance(cfg.compile, bool):
        raise CharLMError(f"compile must be true or false, got {cfg.compile!r}")
    if cfg.compile and cfg.backend != "torch":
        raise CharLMError("compile=true needs backend=torch (the NumPy engine has nothing to compile)")
    if not cfg.prompt:
        raise CharLMError("prompt must contain at least one character")


def open_model(cfg: DictConfig):
    """(runner, vocabulary, path) for the configured backend."""
    if cfg.backend == "numpy":
        from charlm.numpy_gpt import load_export  # imported here: this backend never imports torch

        if cfg.ckpt is None or not str(cfg.ckpt).endswith(".npz"):
            raise CharLMError("backend=numpy runs a portable export: first `python -m charlm.export CHECKPOINT "
                              "--format npz`, then sample.py backend=numpy ckpt=FILE.npz")
        model, vocab = load_export(cfg.ckpt)
        return model, vocab, cfg.ckpt
    from charlm.checkpoint import load_model, newest_run  # torch: imported only for this backend
    from charlm.torch_runner import TorchRunner

    loaded = load_model(cfg.ckpt if cfg.ckpt is not None else newest_run(Path(cfg.paths.root) / "runs"))
    return TorchRunner(loaded.model.to(cfg.device), compile=cfg.compile), loaded.vocab, loaded.path


def sample(cfg: DictConfig) -> None:
    check_sample_config(cfg)
    runner, vocab, path = open_model(cfg)
    print(f"sampling from {path} ({cfg.backend})", file=sys.stderr, flush=True)
    prompt_ids = np.array([vocab.encode(cfg.prompt)] * cfg.num_samples, dtype=np.int64)
    rng = np.random.default_rng(cfg.seed)  # seed None: fresh entropy each call
    steps = generate(runner, prompt_ids, cfg.num_tokens, cfg.temperature, cfg.top_k, cfg.top_p, rng)
    out = sys.stdout
    if cfg.num_samples == 1:  # stream character by character
        out.write(cfg.prompt)
        for next_id in steps:
            out.write(vocab.chars[int(next_id[0])])
            out.flush()
        out.write("\n")
    else:  # one batch; print each sample when all are done
        columns = np.stack(list(steps), axis=1) if cfg.num_tokens else prompt_ids[:, :0]  # (N, num_tokens)
        for i, row in enumerate(columns.tolist()):
            if i:
                out.write("\n" + "-" * 40 + "\n")
            out.write(cfg.prompt + vocab.decode(row) + "\n")
    out.flush()
