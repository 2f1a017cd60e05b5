"""Train a character-level language model: `python train.py [key=value ...]` (see conf/)."""

import hydra
from omegaconf import DictConfig

from charlm.cli import register_resolvers, run_cli
from charlm.train import train

register_resolvers()


@hydra.main(version_base="1.3", config_path="pkg://charlm.conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return run_cli(train, cfg)


if __name__ == "__main__":
    main()
