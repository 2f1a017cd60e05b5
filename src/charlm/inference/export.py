"""Write a trained checkpoint's weights in a portable format.

    charlm export CHECKPOINT_OR_RUN [--format npz] [--out FILE]

The .npz holds every weight under its torch name plus the model config and vocabulary as JSON: the
NumPy engine (sample.py backend=numpy) runs it without torch, and load_model() reads it back into
torch with identical logits.
"""

import argparse
import sys
from pathlib import Path

from charlm.core.atomic import check_output
from charlm.core.cli import run_cli
from charlm.core.errors import CharLMError
from charlm.core.export_format import check_output_name, write_export
from charlm.core.prompts import user_path
from charlm.core.run_folder import find_checkpoint
from charlm.inference.checkpoint import load_model, numpy_weights

FORMATS = ("npz",)


def export(checkpoint, fmt: str = "npz", out: Path | None = None) -> Path:
    if fmt not in FORMATS:
        raise CharLMError(f"unknown export format {fmt!r}; supported: {', '.join(FORMATS)}")
    source = find_checkpoint(checkpoint)
    out = Path(out) if out else source.with_suffix(".npz")
    check_output(out, source)
    check_output_name(out, export=True)
    loaded = load_model(source)
    if loaded.quantization is not None:
        raise CharLMError(f"{source} holds int8 weights, which the export format does not; export the float "
                          "checkpoint it was made from")
    write_export(out, loaded.model_config, loaded.vocab.chars, numpy_weights(loaded.model), loaded.vocab.mode,
                 loaded.data)
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="charlm export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a .ckpt file or a run folder (its best checkpoint)")
    parser.add_argument("--format", default="npz", help="npz (the only format so far)")
    parser.add_argument("--out", type=user_path, help="output file (default: beside the checkpoint, .npz)")
    args = parser.parse_args(argv)
    path = export(args.checkpoint, args.format, args.out)
    print(path)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
