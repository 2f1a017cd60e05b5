"""Generate text from a trained checkpoint: `python sample.py ckpt=RUN_OR_FILE prompt=ROMEO:` (see conf/sample.yaml)."""

import hydra
from omegaconf import DictConfig

from charlm.cli import run_cli
from charlm.sample import sample


@hydra.main(version_base="1.3", config_path="pkg://charlm.conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    run_cli(sample, cfg)


if __name__ == "__main__":
    main()
