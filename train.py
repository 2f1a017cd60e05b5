"""Train a character-level language model: `python train.py [key=value ...]` (see conf/config.yaml)."""

from charlm.commands import train_main

if __name__ == "__main__":
    train_main()
