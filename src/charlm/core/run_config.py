"""The training config's schema: one dataclass per group, registered in Hydra's ConfigStore, with the
YAML files of conf/ as presets over them. Each knob's type, default, doc and range are in one place
(charlm.core.checks.knob); what is checked here besides is what one field cannot say.

Every value a user sets has one owner: a top-level knob (max_steps, block_size, lr, ...). The group
configs link to it (`data.block_size: ${block_size}`), so setting the owner changes every copy. A copy
set on its own (Lightning's `trainer.max_steps=60`, `data.block_size=48`, ...) is handed to its owner,
so it takes effect everywhere; a copy and its owner set to different values is refused.
Torch-free and Lightning-free: it answers before the heavy imports.
"""

import copy
import sys
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from charlm.core import checks
from charlm.core.checks import check_knobs, knob
from charlm.core.corpus import check_source, resolve_path
from charlm.core.errors import CharLMError
from charlm.core.inference_config import SCORING_BATCH, EvaluateConfig, PicturesConfig, RecordedData, SampleConfig
from charlm.core.model_config import MODEL_CONFIGS, GPTConfig
from charlm.core.prompts import PATH_KEYS
from charlm.core.run_folder import (
    check_free,
    find_checkpoint,
    launched_rank,
    requeue_checkpoint,
    resume_file,
    run_folder_of,
)
from charlm.core.sweep import as_dict, asks_for_sweep, in_sweep, job_overrides, override_key
from charlm.core.vocab import MODES

MODEL = {spec.name: spec.default for spec in fields(GPTConfig)}  # the top-level sizes default to the GPT's
MUON_DTYPES = ("auto", "float32", "bfloat16")  # of Muon's Newton-Schulz iterations (charlm.training.muon)


@dataclass
class RunKnobs:
    """The top-level knobs: shared by every model family, the data and the trainer."""

    name: str = knob("${model.name}", "the run's name: part of its output folder's name",
                     check=checks.folder_name)
    n_layer: int = knob(MODEL["n_layer"], "blocks of the model")
    n_head: int = knob(MODEL["n_head"], "attention heads (model=gpt only)")
    n_embd: int = knob(MODEL["n_embd"], "width of the model")
    block_size: int = knob(MODEL["block_size"], "characters of context the model sees and trains on")
    dropout: float = knob(MODEL["dropout"], "dropout probability", low=0, high=1, high_open=True)
    batch_size: int = knob(16, "blocks per training step (per process under DDP)")
    lr: float = knob(1e-3, "AdamW's learning rate: every parameter with optimizer=adamw; with optimizer=muon "
                     "only embeddings, head, norms and biases (optimizer.muon_lr trains the rest)", low_open=True)
    max_steps: int = knob(5000, "optimizer steps of the run; the schedule ends there")
    max_time: str | None = knob(None, "wall-clock budget, DD:HH:MM:SS; stops early, keeping the best checkpoint",
                                check=checks.wall_clock)
    eval_interval: int = knob(500, "steps between validations (clipped to max_steps)")
    seed: int = knob(1337, "seeds weights, batches and dropout", check=checks.seed)
    threads: int | None = knob(None, "intra-op CPU threads; null keeps torch's default (one per core)",
                               check=checks.threads)
    ckpt_path: str | None = knob(None, "resume: a checkpoint file, a run folder (its last.ckpt) or last; "
                                   "the run's own arguments apply, then those given")
    init_from: str | None = knob(None, "fine-tune: start from this checkpoint's weights, model and vocabulary")
    compile: bool = knob(False, "torch.compile the model (falls back to eager with a warning where it cannot)")

    def __post_init__(self):
        check_knobs(self)


@dataclass
class RunConfig(RunKnobs):
    """The root schema: the top-level knobs and the groups (the ones with no schema here are Lightning's
    own objects: trainer, callbacks, logger)."""

    model: Any = None
    data: Any = None
    optimizer: Any = None
    trainer: Any = None
    logger: Any = None
    callbacks: Any = None
    paths: Any = None


@dataclass
class OptimizerConfig:
    name: str = knob("adamw", "adamw: AdamW for every parameter | muon: Muon for the blocks' 2-D weight matrices, "
                     "AdamW for the rest", choices=("adamw", "muon"))
    lr: float = knob(1e-3, "AdamW's learning rate (set the top-level lr)", low_open=True)
    betas: list[float] = knob(factory=lambda: [0.9, 0.99], doc="AdamW's betas", check=checks.pair)
    weight_decay: float = knob(0.1, "AdamW's weight decay, on weight matrices and embeddings only")
    warmup_steps: int = knob(100, "steps of linear warm-up", low=0)
    min_lr_ratio: float = knob(0.1, "the decay ends at lr * min_lr_ratio", high=1)
    decay_steps: int | None = knob(None, "steps to the end of the decay (null: max_steps)")
    schedule: str = knob("cosine", "cosine: decay from the end of warm-up | wsd: warm-up, stable at lr, then a "
                         "linear decay", choices=("cosine", "wsd"))
    decay_fraction: float = knob(0.2, "wsd: the last fraction of the schedule that decays", low_open=True, high=1)
    muon_lr: float = knob(0.01, "optimizer=muon: Muon's learning rate, for the 2-D weight matrices inside the "
                          "blocks (attention and MLP projections, convolution kernels)", low_open=True)
    muon_momentum: float = knob(0.95, "optimizer=muon: Muon's momentum", high=1, high_open=True)
    muon_weight_decay: float = knob(0.0, "optimizer=muon: each step multiplies the matrices by "
                                    "1 - muon_lr * muon_weight_decay")
    muon_ns_steps: int = knob(5, "optimizer=muon: Newton-Schulz iterations that orthogonalise each update", high=99)
    muon_dtype: str = knob("auto", "optimizer=muon: dtype of those iterations: auto (bfloat16 on GPUs and CPUs "
                           "with native bfloat16, else float32) | float32 | bfloat16", choices=MUON_DTYPES)

    def __post_init__(self):
        check_knobs(self, "optimizer.")

    def applied(self) -> dict:
        """The settings this optimizer uses, as plain values: AdamW's leave out Muon's."""
        settings = asdict(self)
        return {k: v for k, v in settings.items() if self.name == "muon" or not k.startswith("muon_")}


@dataclass
class DataConfig:
    path: str = knob("tinyshakespeare", "a text file, or tinyshakespeare: the corpus shipped in the package")
    vocab: str = knob("chars", "chars: the text's distinct UTF-8 characters | bytes: 256 byte values, for any "
                      "file", choices=MODES)
    block_size: int = knob(MODEL["block_size"], "characters per block (set the top-level block_size)")
    batch_size: int = knob(16, "blocks per training batch (set the top-level batch_size)")
    eval_batch_size: int | None = knob(None, SCORING_BATCH)
    train_fraction: float = knob(0.9, "the first part of the text, which trains; validation and test share the "
                                 "rest", low_open=True, high=1, high_open=True)
    test_fraction: float = knob(0.0, "the last part, held out for `evaluate.py split=test` (enwik8-style: 0.05)",
                                high=1, high_open=True)
    max_val_tokens: int | None = knob(1_000_000, "each validation scores at most this many tokens, spread over "
                                      "the split (null: all)")
    num_batches: int = knob(5000, "random training batches per epoch (set max_steps: one epoch is the whole run)")
    num_workers: int = knob(0, "DataLoader worker processes (a batch is one indexing op: workers only add "
                            "overhead)", low=0)
    seed: int = knob(1337, "seeds the batches (set the top-level seed)", check=checks.seed)
    cache_dir: str | None = knob(None, "the token cache; null: $XDG_CACHE_HOME/charlm/tokens or "
                                 "~/.cache/charlm/tokens")

    def __post_init__(self):
        check_knobs(self, "data.")
        if self.train_fraction + self.test_fraction >= 1:
            raise CharLMError(f"data.train_fraction ({self.train_fraction}) + data.test_fraction "
                              f"({self.test_fraction}) must be below 1: validation needs the rest")


def model_schema(family: str) -> type:
    """The model group's schema for one family: its dataclass's knobs and `name`, without the vocabulary
    size (the data sets it)."""
    specs = [(s.name, s.type, field(default=s.default, metadata=s.metadata))
             for s in fields(MODEL_CONFIGS[family]) if s.name != "vocab_size"]
    return make_dataclass(f"{family.upper()}Schema", [("name", str, field(default=family)), *specs])


def knob_help(command: str = "train") -> str:
    """Every knob of a command's schemas with its type, default and doc, for its `--help`."""
    sections = {"sample": [("options", "", SampleConfig)], "attention": [("options", "", PicturesConfig)],
                "evaluate": [("options", "", EvaluateConfig), ("data (null: as the run recorded it)", "data.",
                                                               RecordedData)]}.get(command)
    if sections is None:
        sections = [("top level", "", RunKnobs), ("optimizer=adamw|muon", "optimizer.", OptimizerConfig),
                    ("data", "data.", DataConfig)]
        sections += [(f"model={family}", "model.", cls) for family, cls in MODEL_CONFIGS.items()]
    lines = []
    for title, prefix, cls in sections:
        lines.append(f"{title}:")
        for spec in fields(cls):
            if "doc" not in spec.metadata or prefix + spec.name in COPIES or spec.name == "vocab_size":
                continue  # a copy of a top-level knob, or set from the data
            kind, nullable = checks.kind_of(spec.type)
            default = spec.default_factory() if callable(spec.default_factory) else spec.default
            shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
            kind_name = getattr(kind, "__name__", str(kind)) + (" | null" if nullable else "")
            lines.append(f"  {prefix + spec.name:<28} {kind_name:<12} {shown!s:<16} {spec.metadata['doc']}")
    return "\n".join(lines).replace("$", "$$") + "\n"  # $$: Hydra's help template is a string.Template


def config_groups() -> dict[str, list[str]]:
    """Each config group (a folder of conf/) with its options (the YAML presets; the schemas they build on
    are not options)."""
    conf = resources.files("charlm") / "conf"
    return {folder.name: sorted(f.name.removesuffix(".yaml") for f in folder.iterdir() if f.name.endswith(".yaml"))
            for folder in sorted(conf.iterdir(), key=lambda folder: folder.name) if folder.is_dir()}


def group_help() -> str:
    """Each config group with its options, for `--help`."""
    return "\n".join(f"{name}: {', '.join(options)}" for name, options in config_groups().items() if options) + "\n"


def register_schemas() -> None:
    """Put the schemas in Hydra's ConfigStore, where the YAML presets name them in their defaults."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(name="sample_schema", node=SampleConfig)
    store.store(name="evaluate_schema", node=EvaluateConfig)
    store.store(name="attention_schema", node=PicturesConfig)
    store.store(group="optimizer", name="schema", node=OptimizerConfig)
    store.store(group="data", name="schema", node=DataConfig)
    for family in MODEL_CONFIGS:
        store.store(group="model", name=f"{family}_schema", node=model_schema(family))


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
RUN_FOLDER_COPIES = ("paths.run_dir", "trainer.default_root_dir", "callbacks.checkpoint.dirpath",
                     "callbacks.last_checkpoint.dirpath",
                     *(f"logger.{tracker}.save_dir" for tracker in ("tensorboard", "csv", "mlflow", "wandb")))
# The config groups a training run has one option of each of (conf/config.yaml's defaults list).
NEEDED_GROUPS = ("model", "data", "optimizer", "trainer", "paths")
# Knobs that shape the model: a fine-tuned run takes its checkpoint's, so setting one is refused.
MODEL_SHAPE = ("n_layer", "n_head", "n_embd", "block_size")


# A resume does not take these from the arguments its run was started with: where to resume from is
# given now, and a search would start a new sweep.
NOT_RESUMED = ("ckpt_path", "hparams_search")


def owner_of(key: str) -> str:
    """The knob a key sets: a copy's owner (trainer.max_steps -> max_steps), else the key itself."""
    return COPIES.get(key, (key,))[0]


def override_keys(overrides) -> set[str]:
    """The keys a list of Hydra overrides sets."""
    return {override_key(item) for item in overrides or [] if "=" in item}


def with_run_arguments(argv: list[str]) -> tuple[Path, list[str]] | None:
    """`ckpt_path=RUN` (a run folder, a checkpoint in one, or `last`) takes the arguments RUN was started with
    (its .hydra/overrides.yaml), placed before the ones given now, which win knob by knob: `python train.py
    ckpt_path=last` continues the newest run as it was set up, `... max_steps=9000` extends it. In place;
    returns the file and the arguments taken from it, if any."""
    if asks_for_sweep(argv):
        return None
    given = {owner_of(key): value for key, value in as_dict(argv[1:]).items()}
    if given.get("ckpt_path") in (None, "", "null"):
        return None
    root = given.get("paths.root") or OmegaConf.load(resources.files("charlm") / "conf" / "paths" / "default.yaml").root
    try:
        run = run_folder_of(resume_file(given["ckpt_path"], Path(root).expanduser() / "runs"))
        started_with = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "overrides.yaml"))
    except (CharLMError, OSError, TypeError, ValueError):  # no such run, or not laid out as ours: the run says why
        return None
    carried = [from_where_it_started(item, run) for item in started_with
               if isinstance(item, str) and owner_of(override_key(item)) not in {*given, *NOT_RESUMED}]
    if not carried:
        return None
    print(f"resuming {run} with the arguments it was started with: {' '.join(carried)}", file=sys.stderr)
    argv[1:1] = carried
    return run / ".hydra" / "overrides.yaml", carried


def from_where_it_started(item: str, run: Path) -> str:
    """A run's argument as it read there: a relative path (`data.path=my.txt`) made absolute against the
    folder the run was started in (its hydra.yaml records it), so a resume started elsewhere reads the same
    file. Other arguments, and paths that are not there, unchanged."""
    key, value = override_key(item), as_dict([item]).get(override_key(item))
    if key not in PATH_KEYS or not value or Path(value).expanduser().is_absolute():
        return item
    try:
        started_in = Path(OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra.runtime.cwd)
    except Exception:  # no hydra.yaml, or not Hydra's: leave the path to the folder the resume starts in
        return item
    return f"{key}={started_in / value}" if (started_in / value).exists() else item


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


def refuse_what_does_not_apply(cfg: DictConfig, given: set[str], sweep: bool) -> None:
    """A knob set on the command line that the chosen model, optimizer or starting point ignores is
    refused, naming what it applies to. Set by a preset, in a sweep (`-m model=cnn,gpt n_head=2` sets it
    for the jobs it applies to), or in a resume (which takes the arguments its run, perhaps such a job,
    started with), it is left out of the run's settings."""
    model, optimizer = cfg.model.name, cfg.optimizer.name
    muon_keys = sorted(k for k in given if k.startswith("optimizer.muon_"))
    lenient = sweep or cfg.ckpt_path is not None
    if model != "gpt" and "n_head" in given and not lenient:
        raise CharLMError(f"n_head applies to model=gpt only; this run trains model={model}: drop n_head")
    if optimizer != "muon" and muon_keys and not lenient:
        raise CharLMError(f"{muon_keys[0]} applies to optimizer=muon only; this run uses optimizer={optimizer}: "
                          "add optimizer=muon, or drop it")
    shaped = sorted(k for k in given if k in MODEL_SHAPE or k.startswith("model."))
    if cfg.init_from is not None and shaped:
        raise CharLMError(f"{shaped[0]} does not apply with init_from: a fine-tuned run keeps its checkpoint's "
                          "model (dropout, lr and the rest do apply); drop it, or train a new model")


def group_settings(cls: type, node: DictConfig):
    """A group's config as its schema object: every knob checked (one CharLMError naming the first bad
    one)."""
    return cls(**OmegaConf.to_container(node, resolve=True))


@dataclass(frozen=True)
class RunSettings:
    """What a training run reads from its config, checked: the knobs, the model config (plain values),
    the optimizer's and the data's."""

    knobs: RunKnobs
    model: dict
    optimizer: OptimizerConfig
    data: DataConfig


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "64")


def check_lightning_groups(cfg: DictConfig) -> None:
    """The few settings of Lightning's own objects (trainer, callbacks) that would otherwise fail late or
    with a traceback. (Devices are checked where torch is: charlm.training.devices.check_devices.)"""
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


def prepare_run_config(cfg: DictConfig, overrides=(), sweep: bool = False) -> RunSettings:
    """What every training run does first: hand copies to their owners, refuse knobs that do not apply
    (`sweep`: a job of a sweep), check every value, and return the settings as schema objects."""
    resolve_copies(cfg, overrides)
    refuse_what_does_not_apply(cfg, override_keys(overrides), sweep)
    knobs = RunKnobs(**{spec.name: cfg[spec.name] for spec in fields(RunKnobs)})
    if cfg.model.name not in MODEL_CONFIGS:
        raise CharLMError(f"unknown model {cfg.model.name!r}; choose one of: {', '.join(MODEL_CONFIGS)}")
    optimizer = group_settings(OptimizerConfig, cfg.optimizer)
    data = group_settings(DataConfig, cfg.data)
    check_lightning_groups(cfg)
    return RunSettings(knobs, OmegaConf.to_container(cfg.model, resolve=True), optimizer, data)


def check_before_loading(cfg: DictConfig) -> None:
    """What `train` can refuse before torch and Lightning load (seconds): every value, checked on a copy
    (the run itself prepares `cfg`), a data file that is missing, empty or a folder, a checkpoint to
    resume or fine-tune that is not there, and a new run's folder holding another run (a SLURM requeue
    resumes in its own)."""
    if HydraConfig.initialized() and HydraConfig.get().job.chdir:
        raise CharLMError("hydra.job.chdir=true: a run reads every path from the folder it was started in, and "
                          "writes all its files into its run folder already; leave it out")
    settings = prepare_run_config(copy.deepcopy(cfg), job_overrides(), in_sweep())
    knobs = settings.knobs
    check_source(resolve_path(settings.data.path))
    if knobs.init_from is not None:
        find_checkpoint(knobs.init_from)
    if knobs.ckpt_path is not None:
        resume_file(knobs.ckpt_path, Path(cfg.paths.root) / "runs")
    elif launched_rank() == 0:  # the other ranks share rank zero's folder
        run_dir = Path(cfg.paths.run_dir)
        check_free(run_dir, resuming=requeue_checkpoint(run_dir) is not None)
