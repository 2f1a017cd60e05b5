"""Where a run starts from: a fresh model, an interrupted run to resume, or trained weights to fine-tune."""

from pathlib import Path

from charlm.core.errors import CharLMError
from charlm.core.model_config import full_config
from charlm.core.run_folder import resume_file
from charlm.core.vocab import Vocabulary
from charlm.inference.checkpoint import BEST_KEY, LoadedModel, load_model, read_checkpoint
from charlm.training.console import say


def best_score(checkpoint: dict) -> float | None:
    """The best val/loss the run had reached when this checkpoint was saved (None: not recorded)."""
    return (checkpoint.get(BEST_KEY) or {}).get("loss")


def time_trained(checkpoint: dict) -> float | None:
    """The training seconds Lightning's Timer (max_time's clock) had counted when this checkpoint was saved."""
    return ((checkpoint.get("callbacks") or {}).get("Timer") or {}).get("time_elapsed", {}).get("train")


def early_stop_patience(checkpoint: dict) -> int | None:
    """The patience early stopping had run out of when this checkpoint was saved (the run stopped there),
    else None."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if key.startswith("EarlyStopping") and state.get("wait_count", 0) >= state.get("patience", float("inf")):
            return state["patience"]
    return None


def read_resume_checkpoint(file: Path) -> dict:
    """read_checkpoint, pointing at the run's intact best checkpoint when its last.ckpt is broken."""
    try:
        return read_checkpoint(file)
    except CharLMError as err:
        best = sorted(file.parent.glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
        if file.name != "last.ckpt" or not best:
            raise
        raise CharLMError(f"{err}; the run's best checkpoint is intact: resume from it with "
                          f"ckpt_path={best[-1]}") from None


def resume_checkpoint(ckpt_path: str | None, runs_dir: Path, model_config: dict, vocab: Vocabulary,
                      optimizer_name: str) -> tuple[Path | None, dict]:
    """Resolve `ckpt_path` and check the checkpoint fits this model, vocabulary and optimizer.

    Returns the checkpoint file (None for a fresh run) and the checkpoint's contents ({} for a fresh run).
    """
    if ckpt_path is None:
        return None, {}
    file = resume_file(ckpt_path, runs_dir)
    checkpoint = read_resume_checkpoint(file)
    saved = checkpoint["hyper_parameters"]
    if saved.get("quantization") is not None or "optimizer_states" not in checkpoint:
        raise CharLMError(f"cannot resume from {file}: it holds weights only (an int8 or exported model), without "
                          "the optimizer state a resumed run needs; give the run folder or its last.ckpt")
    if Vocabulary(saved["vocab"], saved.get("vocab_mode", "chars")) != vocab:
        raise CharLMError(f"cannot resume from {file}: it was trained on a different vocabulary (other data, "
                          "or another data.vocab)")
    there, here = saved["optimizer"].get("name", "adamw"), optimizer_name
    if there != here:
        raise CharLMError(f"cannot resume from {file}: it was trained with optimizer={there}, this run uses "
                          f"optimizer={here}; add optimizer={there}, or start a new run from its weights (init_from)")
    there, here = full_config(saved["model"]), full_config(model_config)
    if there != here:
        changed = sorted(k for k in there.keys() | here.keys() if there.get(k) != here.get(k))
        diffs = ", ".join(f"{k}: {there.get(k)!r} there, {here.get(k)!r} here" for k in changed)
        raise CharLMError(f"cannot resume from {file}: its model differs ({diffs})")
    return file, checkpoint


def fine_tune_source(knobs, vocab_mode: str) -> tuple[LoadedModel, dict]:
    """The checkpoint to fine-tune from (`knobs.init_from`), and the model config to train: the
    checkpoint's, with this run's dropout. Its vocabulary and block size are kept, so text with other
    characters is rejected. (With ckpt_path too, a fine-tuning run resumes: this gives its model.)"""
    init = load_model(knobs.init_from)
    if init.quantization is not None:
        raise CharLMError(f"cannot fine-tune a quantized checkpoint: {init.path}; use the float checkpoint")
    if init.vocab.mode != vocab_mode:
        raise CharLMError(f"{init.path} reads text as {init.vocab.mode}: add data.vocab={init.vocab.mode}")
    config = dict(init.model_config)
    if "dropout" in config:
        config["dropout"] = knobs.dropout
    say(f"fine-tuning {init.path}: its model ({config['name']}, block_size {init.model.block_size}) and vocabulary "
        f"({init.vocab.describe()})")
    return init, config
