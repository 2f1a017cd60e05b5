"""What a sweep varies, and runs named by it: `model=cnn` and `model=gpt` rather than folder names that
list every override. Read from the sweep's multirun.yaml (the command line, as Hydra saved it), or,
for any folder of runs, from the overrides in which their .hydra/overrides.yaml files differ."""

import re
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from hydra.types import RunMode
from omegaconf import OmegaConf

NOT_SETTINGS = ("hydra", "ckpt_path", "init_from", "paths.")  # where a run is, not what it is


def in_sweep() -> bool:
    """This process runs a job of a Hydra sweep (`-m`)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_overrides() -> list[str]:
    """This job's overrides from the command line, when Hydra started it."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def override_key(item: str) -> str:
    """The key a Hydra override sets ("+a.b=1" -> "a.b", "~a" -> "a")."""
    return str(item).partition("=")[0].lstrip("+~")


def hydra_reading(argument: str):
    """How Hydra's override grammar reads `argument` (key=value): its Override, or None where it cannot."""
    try:
        return OverridesParser.create().parse_overrides([argument])[0]
    except OverrideParseException:
        return None


def unquoted(value: str) -> str:
    """A value as typed, without the quotes Hydra reads away: "'/my runs/a'" -> "/my runs/a" (paths with
    characters Hydra would not read are quoted before it parses them: charlm.core.prompts)."""
    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
        reading = hydra_reading(f"value={value}")
        if reading is not None and isinstance(reading.value(), str):  # not a sweep over quoted values ('a','b')
            return reading.value()
    return value


def as_dict(overrides) -> dict[str, str | None]:
    """["model=cnn", "+x=1", "data.path='a b.txt'", "~logger"] -> {"model": "cnn", "x": "1", "data.path": "a b.txt",
    "logger": None}: None for a key removed with ~."""
    return {override_key(item): None if str(item).startswith("~") and "=" not in str(item)
            else unquoted(str(item).partition("=")[2]) for item in overrides or []}


def asks_for_sweep(argv: list[str]) -> bool:
    """Whether a command line starts a sweep (Hydra's -m / --multirun)."""
    return "-m" in argv or "--multirun" in argv


def swept_keys(sweep_dir: Path, sweeper_params=None) -> list[str]:
    """The keys a sweep varies, in the order typed: the sweep overrides its multirun.yaml records
    (`model=cnn,gpt`, `lr=range(...)`), and a sweeper's parameters (`hydra.sweeper.params`: Optuna's
    search space). Empty for a folder that is no sweep."""
    keys = [str(k) for k in sweeper_params or {}]
    try:
        saved = OmegaConf.load(Path(sweep_dir) / "multirun.yaml")
        parsed = OverridesParser.create().parse_overrides(list(saved.hydra.overrides.task))
        keys = [o.key_or_group for o in parsed if o.is_sweep_override()] + keys
        keys += [str(k) for k in saved.hydra.sweeper.get("params") or {}]
    except Exception:  # no multirun.yaml (not a sweep, or a sweeper that writes none): the parameters only
        pass
    return [k for k in dict.fromkeys(keys) if not k.startswith(NOT_SETTINGS)]


def differing_keys(runs_overrides: list[dict[str, str]]) -> list[str]:
    """The override keys whose values are not the same in every run (missing counts as a value)."""
    keys = dict.fromkeys(k for overrides in runs_overrides for k in overrides)
    return [k for k in keys if not k.startswith(NOT_SETTINGS)
            and len({overrides.get(k) for overrides in runs_overrides}) > 1]


def setting_key(key: str, settings: dict) -> str:
    """The name an override key has among a run's flat settings (charlm.training.train.run_settings):
    `n_embd` -> `model.n_embd`, `optimizer` -> `optimizer.name`; other keys keep their own."""
    for name in (key, f"model.{key}", f"{key}.name"):
        if name in settings:
            return name
    return key


def label(keys: list[str], overrides: dict[str, str]) -> str:
    """A run named by the swept settings' values: "model=cnn, n_embd=32" ("" when nothing is swept)."""
    return ", ".join(f"~{k}" if overrides[k] is None else f"{k}={overrides[k]}" for k in keys if k in overrides)


def swept_settings(hydra) -> str:
    """A sweep job's values of what the sweep varies, from its Hydra config: "model=cnn, n_embd=32"."""
    return label(swept_keys(Path(hydra.sweep.dir), hydra.sweeper.get("params")), as_dict(hydra.overrides.task))


def job_label() -> str:
    """This sweep job's swept settings, to tell its output from the other jobs'; "" outside a sweep."""
    return swept_settings(HydraConfig.get()) if in_sweep() else ""


def job_folder_name(_root_) -> str:
    """A sweep job's folder: `<num>_<the swept settings>`, e.g. `0_model=cnn`, one level deep whatever the
    values hold (the resolver `sweep_job` in conf/config.yaml)."""
    hydra = _root_.hydra
    name = swept_settings(hydra).replace(", ", ",")
    return re.sub(r"[/\\\s]+", "_", f"{hydra.job.num}_{name}" if name else str(hydra.job.num))
