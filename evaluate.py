"""Score a trained model on held-out text: `python evaluate.py ckpt=RUN split=val|test` (conf/evaluate.yaml)."""

import hydra
from omegaconf import DictConfig

from charlm.cli import run_cli
from charlm.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="pkg://charlm.conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_cli(evaluate, cfg)


if __name__ == "__main__":
    main()
