"""Score a trained model on held-out text: `python evaluate.py ckpt=RUN split=val|test` (conf/evaluate.yaml)."""

from charlm.commands import evaluate_main

if __name__ == "__main__":
    evaluate_main()
