"""Generate text from a trained model: `python sample.py ckpt=RUN_OR_FILE prompt="To be, or not"` (conf/sample.yaml)."""

from charlm.commands import sample_main

if __name__ == "__main__":
    sample_main()
