"""Train a character-level language model: `python train.py [key=value ...]` (see conf/)."""

from charlm.train import main

if __name__ == "__main__":
    main()
