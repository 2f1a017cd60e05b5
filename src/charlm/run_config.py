"""The training config as one set of owned knobs, checked before any data is read or model built.

Every value a user sets has one owner: a top-level knob (max_steps, block_size, lr, ...). The group
configs link to it (`data.block_size: ${block_size}`), so setting the owner changes every copy. A copy
set on its own (Lightning's `trainer.max_steps=60`, `data.block_size=48`, ...) is handed to its owner,
so it takes effect everywhere; a copy and its owner set to different values is refused.
Torch-free and Lightning-free: it answers before the heavy imports.
"""

from omegaconf import DictConfig, OmegaConf

from charlm import checks
from charlm.errors import CharLMError
from charlm.vocab import MODES

# copy -> (owner, how the copy links to it in conf/)
COPIES = {
    "trainer.max_steps": ("max_steps", "${max_steps}"),
    "data.num_batches": ("max_steps", "${max_steps}"),
    "trainer.max_time": ("max_time", "${max_time}"),
    "trainer.val_check_interval": ("eval_interval", "${min:${eval_interval},${max_steps}}"),
    "data.block_size": ("block_size", "${block_size}"),
    "model.block_size": ("block_size", "${block_size}"),
    "data.batch_size": ("batch_size", "${batch_size}"),
    "optimizer.lr": ("lr", "${lr}"),
    "data.seed": ("seed", "${seed}"),
    "model.n_layer": ("n_layer", "${n_layer}"),
    "model.n_head": ("n_head", "${n_head}"),
    "model.n_embd": ("n_embd", "${n_embd}"),
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


MUON_DTYPES = ("auto", "float32", "bfloat16")  # of Muon's Newton-Schulz iterations (charlm.muon)
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "64")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def check_run_config(cfg: DictConfig) -> None:
    """Every value a training run reads, checked for type and range before anything is read or built.
    (Devices are checked where torch is: charlm.devices.check_devices.)"""
    for key in ("max_steps", "eval_interval", "batch_size", "block_size", "n_layer", "n_embd"):
        checks.integer(key, cfg[key])
    if cfg.model.name == "gpt":
        checks.integer("n_head", cfg.n_head)
    checks.number("lr", cfg.lr, 0, low_open=True)
    checks.number("dropout", cfg.dropout, 0, 1, high_open=True)
    checks.seed("seed", cfg.seed)
    checks.threads("threads", cfg.threads)
    checks.wall_clock("max_time", cfg.max_time)
    checks.text("ckpt_path", cfg.ckpt_path, nullable=True)
    checks.text("init_from", cfg.init_from, nullable=True)
    checks.boolean("compile", cfg.compile)

    optimizer = cfg.optimizer
    betas = optimizer.betas
    if not (OmegaConf.is_list(betas) and len(betas) == 2):
        raise CharLMError(f"optimizer.betas must be two numbers in [0, 1), got {betas!r}")
    for i, beta in enumerate(betas):
        checks.number(f"optimizer.betas[{i}]", beta, 0, 1, high_open=True)
    checks.number("optimizer.weight_decay", optimizer.weight_decay, 0)
    checks.integer("optimizer.warmup_steps", optimizer.warmup_steps, low=0)
    checks.number("optimizer.min_lr_ratio", optimizer.min_lr_ratio, 0, 1)
    checks.integer("optimizer.decay_steps", optimizer.decay_steps, nullable=True)
    checks.choice("optimizer.schedule", optimizer.schedule, ("cosine", "wsd"))
    checks.number("optimizer.decay_fraction", optimizer.decay_fraction, 0, 1, low_open=True)
    checks.choice("optimizer.name", optimizer.name, ("adamw", "muon"))
    if optimizer.name == "muon":
        if "muon_lr" not in optimizer:
            raise CharLMError("optimizer.name=muon needs Muon's settings: choose the group with optimizer=muon")
        checks.number("optimizer.muon_lr", optimizer.muon_lr, 0, low_open=True)
        checks.number("optimizer.muon_momentum", optimizer.muon_momentum, 0, 1, high_open=True)
        checks.number("optimizer.muon_weight_decay", optimizer.muon_weight_decay, 0)
        checks.integer("optimizer.muon_ns_steps", optimizer.muon_ns_steps, high=99)
        checks.choice("optimizer.muon_dtype", optimizer.muon_dtype, MUON_DTYPES)

    data = cfg.data
    checks.text("data.path", data.path)
    checks.choice("data.vocab", data.vocab, MODES)
    checks.integer("data.max_val_tokens", data.max_val_tokens, nullable=True)
    checks.text("data.cache_dir", data.cache_dir, nullable=True)
    checks.integer("data.eval_batch_size", data.eval_batch_size)
    checks.number("data.train_fraction", data.train_fraction, 0, 1, low_open=True, high_open=True)
    checks.number("data.test_fraction", data.test_fraction, 0, 1, high_open=True)
    if data.train_fraction + data.test_fraction >= 1:
        raise CharLMError(f"data.train_fraction ({data.train_fraction}) + data.test_fraction ({data.test_fraction}) "
                          "must be below 1: validation needs the rest")
    checks.integer("data.num_workers", data.num_workers, low=0)

    trainer = cfg.trainer
    checks.choice("trainer.accelerator", trainer.accelerator, ACCELERATORS)
    checks.choice("trainer.precision", str(trainer.precision), PRECISIONS)
    checks.number("trainer.gradient_clip_val", trainer.gradient_clip_val, 0, nullable=True)
    checks.integer("trainer.log_every_n_steps", trainer.log_every_n_steps)
    devices = trainer.devices
    listed = OmegaConf.is_list(devices) and len(devices) > 0 and all(checks.is_int(d) and d >= 0 for d in devices)
    if not (devices == "auto" or listed or checks.is_int(devices) and devices >= 1):
        raise CharLMError(f"trainer.devices must be a positive integer, a list of device ids or auto, got {devices!r}")

    callbacks = cfg.callbacks
    if "early_stopping" in callbacks:
        checks.integer("callbacks.early_stopping.patience", callbacks.early_stopping.patience, low=0)
        checks.number("callbacks.early_stopping.min_delta", callbacks.early_stopping.min_delta, 0)
    if "text_sample" in callbacks:
        checks.integer("callbacks.text_sample.num_tokens", callbacks.text_sample.num_tokens, low=0)
        checks.number("callbacks.text_sample.temperature", callbacks.text_sample.temperature, 0)
        checks.text("callbacks.text_sample.prompt", callbacks.text_sample.prompt, nullable=True)


def prepare_run_config(cfg: DictConfig, overrides=()) -> None:
    """Resolve copies to their owners, then check: what every training run does first."""
    resolve_copies(cfg, overrides)
    check_run_config(cfg)
