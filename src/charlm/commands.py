"""The Hydra entry points of train.py, sample.py and evaluate.py, light to import: each loads its
task (torch, Lightning) only when it runs, so `--help`, `--info`, `--cfg job` and a mistyped override
answer at once. `python -m charlm.commands train|sample|evaluate [key=value ...]` runs them without
the repository's scripts (an installed package has no train.py)."""

import sys

import hydra
from omegaconf import DictConfig

from charlm.core.cli import hydra_main, prepare_hydra, run_cli
from charlm.core.internals import skip_hydras_mode_probe
from charlm.core.prompts import take_text_arguments
from charlm.core.run_config import NEEDED_GROUPS, check_before_loading, with_run_arguments

CONFIG = "pkg://charlm.conf"


@hydra.main(version_base="1.3", config_path=CONFIG, config_name="config")
def run_train(cfg: DictConfig) -> float:
    return run_cli(check_then_train, cfg)


def check_then_train(cfg: DictConfig) -> float:
    check_before_loading(cfg)  # a mistyped value or data path: one line at once, not after the imports below
    from charlm.training.train import train  # torch and Lightning: loaded for a run, not for --help or --cfg

    return train(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG, config_name="sample")
def run_sample(cfg: DictConfig) -> None:
    from charlm.inference.sample import sample  # the torch backend loads torch only when it samples

    run_cli(sample, cfg)


@hydra.main(version_base="1.3", config_path=CONFIG, config_name="evaluate")
def run_evaluate(cfg: DictConfig) -> None:
    from charlm.inference.evaluate import evaluate  # torch: loaded for a run, not for --help or --cfg

    run_cli(evaluate, cfg)


@hydra.main(version_base="1.3", config_path=CONFIG, config_name="attention")
def run_attention(cfg: DictConfig) -> None:
    from charlm.inference.pictures import draw  # torch and matplotlib: loaded for a run, not for --help

    run_cli(draw, cfg)


def train_main() -> None:
    prepare_hydra()
    taken = with_run_arguments(sys.argv)  # a resume: the arguments its run was started with, then the ones given
    run_cli(take_text_arguments)  # paths as the shell passed them, before Hydra
    hydra_main(run_train, taken, NEEDED_GROUPS)


def sample_main() -> None:
    prepare_hydra()
    skip_hydras_mode_probe("sample")  # its config never sets hydra.mode: one composition instead of two
    run_cli(take_text_arguments)  # prompts and paths as the shell passed them
    hydra_main(run_sample)


def evaluate_main() -> None:
    prepare_hydra()
    skip_hydras_mode_probe("evaluate")  # its config never sets hydra.mode: one composition instead of two
    run_cli(take_text_arguments)
    hydra_main(run_evaluate)


def attention_main() -> None:
    prepare_hydra()
    skip_hydras_mode_probe("attention")  # its config never sets hydra.mode: one composition instead of two
    run_cli(take_text_arguments)
    hydra_main(run_attention)


MAINS = {"train": train_main, "sample": sample_main, "evaluate": evaluate_main, "attention": attention_main}

if __name__ == "__main__":
    command = sys.argv.pop(1) if len(sys.argv) > 1 else ""
    if command not in MAINS:
        sys.exit(f"usage: python -m charlm.commands {{{','.join(MAINS)}}} [key=value ...]")
    MAINS[command]()
