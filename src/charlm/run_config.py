"""The training config as one set of owned knobs, checked before any data is read or model built.

Every value a user sets has one owner: a top-level knob (max_steps, block_size, lr, ...). The group
configs link to it (`data.block_size: ${block_size}`), so setting the owner changes every copy. A copy
set on its own (Lightning's `trainer.max_steps=60`, `data.block_size=48`, ...) is handed to its owner,
so it takes effect everywhere; a copy and its owner set to different values is refused.
Torch-free and Lightning-free: it answers before the heavy imports.
"""

import math

from omegaconf import DictConfig, OmegaConf

from charlm.errors import CharLMError

# copy -> (owner, how the copy links to it in conf/)
COPIES = {
    "trainer.max_steps": ("max_steps", "${max_steps}"),
    "data.num_batches": ("max_steps", "${max_steps}"),
    "trainer.max_time": ("max_time", "${max_time}"),
    "trainer.val_check_interval": ("eval_interval", "${min:${eval_interval},${max_steps}}"),
    "data.block_size": ("block_size", "${block_size}"),
    "model.block_size": ("block_size", "${block_size}"),
    "model.max_seq_len": ("block_size", "${block_size}"),
    "data.batch_size": ("batch_size", "${batch_size}"),
    "optimizer.lr": ("lr", "${lr}"),
    "data.seed": ("seed", "${seed}"),
    "model.n_layer": ("n_layer", "${n_layer}"),
    "model.num_layers": ("n_layer", "${n_layer}"),
    "model.n_head": ("n_head", "${n_head}"),
    "model.n_embd": ("n_embd", "${n_embd}"),
    "model.embedding_dim": ("n_embd", "${n_embd}"),
    "model.hidden_dim": ("n_embd", "${n_embd}"),
    "model.dropout": ("dropout", "${dropout}"),
}
# Copies of the run folder, which Hydra owns: they cannot be handed over, only refused.
RUN_FOLDER_COPIES = ("paths.run_dir", "trainer.default_root_dir", "logger.save_dir",
                     "callbacks.checkpoint.dirpath", "callbacks.last_checkpoint.dirpath")


def override_keys(overrides) -> set[str]:
    """The keys a list of Hydra overrides sets ("+a.b=1" -> "a.b")."""
    return {item.split("=", 1)[0].lstrip("+~") for item in overrides or [] if "=" in item}


def resolve_copies(cfg: DictConfig, overrides=()) -> None:
    """Hand every copy set on its own to its owner and link it back, in place. `overrides`: the
    command line's overrides, to tell an owner the user set from one a preset or the default set."""
    given = override_keys(overrides)
    for key in RUN_FOLDER_COPIES:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent)
        if node is not None and leaf in node and not OmegaConf.is_interpolation(node, leaf):
            raise CharLMError(f"{key} is the run folder, which hydra.run.dir sets; set hydra.run.dir instead")
    for key, (owner, link) in COPIES.items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent)
        if node is None or leaf not in node or OmegaConf.is_interpolation(node, leaf):
            continue
        value = node[leaf]
        if value != cfg[owner]:
            if owner in given:
                raise CharLMError(f"{key}={value} and {owner}={cfg[owner]} disagree; {owner} sets both, "
                                  f"so give only {owner}")
            cfg[owner] = value
        node[leaf] = link


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_run_config(cfg: DictConfig) -> None:
    """Top-level values every run needs."""
    for key in ("max_steps", "eval_interval", "batch_size", "block_size"):
        if not is_int(cfg[key]) or cfg[key] < 1:
            raise CharLMError(f"{key} must be a positive integer, got {cfg[key]!r}")
    if not is_number(cfg.lr) or cfg.lr <= 0:
        raise CharLMError(f"lr must be a positive number, got {cfg.lr!r}")
    if cfg.threads is not None and (not is_int(cfg.threads) or cfg.threads < 1):
        raise CharLMError(f"threads must be a positive integer or null, got {cfg.threads!r}")
    if cfg.optimizer.warmup_steps < 0 or not 0 <= cfg.optimizer.min_lr_ratio <= 1:
        raise CharLMError("optimizer.warmup_steps must be >= 0 and optimizer.min_lr_ratio in [0, 1]")


def prepare_run_config(cfg: DictConfig, overrides=()) -> None:
    """Resolve copies to their owners, then check: what every training run does first."""
    resolve_copies(cfg, overrides)
    check_run_config(cfg)
