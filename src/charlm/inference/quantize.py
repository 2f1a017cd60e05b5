"""Weight-only int8 quantization, and a report of what it costs in quality and buys in size.

    charlm quantize CHECKPOINT_OR_RUN [--out FILE] [--quantize-head] [--data PATH]

Linear and convolution weights become int8 with one symmetric scale per output channel
(absmax / 127); embeddings, norms, biases and (unless --quantize-head) the output head stay float32.
Weights are dequantized on the fly, so the model computes in float32 as before. The command writes
the quantized model (sample.py ckpt=FILE samples from it), and nothing else, and prints a
before/after table: file size (the float weights alone, as an export would hold them), parameter
memory, validation loss and bits per character, and generation speed. The loss is scored as
evaluate.py scores it: on the validation split of the run's own text, as its checkpoint recorded it
(text, vocabulary mode, split fractions, cache); --data scores another text.
"""

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from charlm.core.atomic import atomic_write, check_output
from charlm.core.cli import run_cli
from charlm.core.errors import CharLMError
from charlm.core.export_format import check_output_name
from charlm.core.generation import generate
from charlm.core.prompts import user_path
from charlm.core.run_folder import find_checkpoint
from charlm.inference.checkpoint import load_model
from charlm.inference.evaluate import data_settings, score, split_ids
from charlm.inference.export import export
from charlm.inference.torch_runner import TorchRunner
from charlm.models.int8 import SCHEME, parameter_bytes, quantize_model


def save_quantized(path: Path, model: nn.Module, model_config: dict, vocab, quantize_head: bool,
                   data: dict | None) -> None:
    """A checkpoint that load_model() reads: hyper_parameters say how to rebuild the quantized model, and
    the data settings of the run it came from go where a training checkpoint keeps them."""
    checkpoint = {
        "hyper_parameters": {"model": model_config, "vocab": vocab.chars, "vocab_mode": vocab.mode,
                             "quantization": {"scheme": SCHEME, "quantize_head": quantize_head}},
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
    }
    if data is not None:
        checkpoint["datamodule_hyper_parameters"] = {"data": data}
    atomic_write(path, lambda file: torch.save(checkpoint, file))


def validation_loss(model: nn.Module, ids: np.ndarray) -> float:
    """Mean next-character loss over the validation blocks."""
    total, count = score(model, ids, model.block_size)
    return total / count


def generation_speed(model: nn.Module, tokens: int = 300) -> float:
    runner = TorchRunner(model)
    prompt = np.zeros((1, 1), dtype=np.int64)
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in generate(runner, prompt, tokens, rng=np.random.default_rng(0)):
            pass
        rates.append(tokens / (time.perf_counter() - start))
    return float(np.median(rates))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="charlm quantize", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a .ckpt file or a run folder (its best checkpoint)")
    parser.add_argument("--out", type=user_path, help="output file (default: beside the checkpoint, .int8.pt)")
    parser.add_argument("--quantize-head", action="store_true", help="quantize the output projection too")
    parser.add_argument("--data", default=None,
                        help="text for the validation loss (default: the run's own, as its checkpoint recorded it)")
    args = parser.parse_args(argv)

    # Everything is checked before anything is written: the source, the output, the validation text.
    source = find_checkpoint(args.checkpoint)
    out = args.out or source.with_suffix(".int8.pt")
    check_output(out, source, *([Path(args.data)] if args.data else []))
    check_output_name(out, export=False)
    original = load_model(source)
    if original.quantization is not None:
        raise CharLMError(f"{source} is already quantized")
    data = data_settings(original.data, {"path": args.data})
    val_ids, text = split_ids(original, data, "val", other_text="--data PATH")
    print(f"scoring the validation split of {text} ({len(val_ids):,} tokens)", file=sys.stderr, flush=True)

    quantized = quantize_model(load_model(source).model, args.quantize_head)
    save_quantized(out, quantized, original.model_config, original.vocab, args.quantize_head, original.data)
    reloaded = load_model(out).model  # measure what sampling will load
    with tempfile.TemporaryDirectory() as tmp:  # the float weights alone: a fair size to compare with
        float_size = export(source, "npz", Path(tmp) / "float32.npz").stat().st_size
    rows = []
    for name, model, size in [("float32", original.model, float_size), ("int8", reloaded, out.stat().st_size)]:
        loss = validation_loss(model, val_ids)
        rows.append((name, size / 1e6, parameter_bytes(model) / 1e6, loss, loss / math.log(2),
                     generation_speed(model)))
    print(f"{source}: checkpoint file {source.stat().st_size / 1e6:.2f} MB (with optimizer state)")
    print("| weights | file MB | parameter MB | val loss | val bpc | generation chars/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, size, memory, loss, bpc, speed in rows:
        print(f"| {name} | {size:.2f} | {memory:.2f} | {loss:.4f} | {bpc:.4f} | {speed:,.0f} |")
    print(f"size {rows[0][1] / rows[1][1]:.2f}x smaller, val loss {rows[1][3] - rows[0][3]:+.5f}; wrote {out}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
