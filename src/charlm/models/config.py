"""Checks shared by the models' config dataclasses, so a bad value fails before any tensor is built."""

from dataclasses import fields


def check_config(config, model_name: str) -> None:
    """Type-check every field, require positive integer sizes and dropout in [0, 1)."""
    for field in fields(config):
        value = getattr(config, field.name)
        expected = field.type
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            setattr(config, field.name, value)
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if not ok:
            raise ValueError(f"{model_name} option {field.name} must be {expected.__name__}, got {value!r}")
        if expected is int and value < 1:
            raise ValueError(f"{model_name} option {field.name} must be a positive integer, got {value}")
    dropout = getattr(config, "dropout", 0.0)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
