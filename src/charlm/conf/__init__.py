"""The Hydra configuration: train.py and sample.py read it from the installed package (pkg://charlm.conf)."""
