"""Weight-only int8 quantization, and a report of what it costs in quality and buys in size.

    python -m charlm.quantize CHECKPOINT_OR_RUN [--out FILE] [--quantize-head] [--data PATH]

Linear and convolution weights become int8 with one symmetric scale per output channel
(absmax / 127); embeddings, norms, biases and (unless --quantize-head) the output head stay float32.
Weights are dequantized on the fly, so the model computes in float32 as before. The command writes
the quantized model (sample.py ckpt=FILE samples from it) and prints a before/after table: file
size, parameter memory, validation loss and bits per character, and generation speed.
"""

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from charlm.atomic import atomic_write, check_output
from charlm.checkpoint import find_checkpoint, load_model
from charlm.cli import run_cli
from charlm.corpus import ids_in, load_corpus
from charlm.data import split_bounds
from charlm.errors import CharLMError
from charlm.evaluate import score
from charlm.export import export
from charlm.generation import generate
from charlm.int8 import SCHEME, parameter_bytes, quantize_model
from charlm.torch_runner import TorchRunner


def save_quantized(path: Path, model: nn.Module, model_config: dict, vocab, quantize_head: bool) -> None:
    """A checkpoint that load_model() reads: hyper_parameters say how to rebuild the quantized model."""
    checkpoint = {
        "hyper_parameters": {"model": model_config, "vocab": vocab.chars, "vocab_mode": vocab.mode,
                             "quantization": {"scheme": SCHEME, "quantize_head": quantize_head}},
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
    }
    atomic_write(path, lambda file: torch.save(checkpoint, file))


def validation_tokens(vocab, data_path: str | None, block_size: int) -> np.ndarray:
    """The validation split (the last 10%) of the text, checked against the model before anything is
    written: its vocabulary, and at least one block."""
    path = data_path or "tinyshakespeare"
    corpus = load_corpus(data_path, vocab.mode)
    start, end = split_bounds(len(corpus.tokens), 0.9)["val"]
    ids = ids_in(corpus.tokens[start:end], corpus.vocab, vocab, f"the validation text ({path})",
                 "; give the text the model was trained on with --data PATH")
    if end - start < block_size + 1:
        raise CharLMError(f"the validation text ({path}) is too short: its last 10% has {end - start} characters, "
                          f"and one block of this model needs {block_size + 1}")
    return ids


def validation_loss(model: nn.Module, ids: np.ndarray) -> float:
    """Mean next-character loss over the validation blocks."""
    total, count = score(model, ids, model.block_size, batch_size=64)
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
    parser = argparse.ArgumentParser(prog="python -m charlm.quantize", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a .ckpt file or a run folder (its best checkpoint)")
    parser.add_argument("--out", type=Path, help="output file (default: beside the checkpoint, .int8.pt)")
    parser.add_argument("--quantize-head", action="store_true", help="quantize the output projection too")
    parser.add_argument("--data", default=None, help="text for the validation loss (default: Tiny Shakespeare)")
    args = parser.parse_args(argv)

    # Everything is checked before anything is written: the source, the outputs, the validation text.
    source = find_checkpoint(args.checkpoint)
    out = args.out or source.with_suffix(".int8.pt")
    float_out = source.with_suffix(".float32.npz")  # the float weights alone: a fair size to compare
    check_output(out, source, *([Path(args.data)] if args.data else []))
    check_output(float_out, source)
    original = load_model(source)
    if original.quantization is not None:
        raise CharLMError(f"{source} is already quantized")
    val_ids = validation_tokens(original.vocab, args.data, original.model.block_size)

    float_file = export(source, "npz", float_out)
    quantized = quantize_model(load_model(source).model, args.quantize_head)
    save_quantized(out, quantized, original.model_config, original.vocab, args.quantize_head)
    reloaded = load_model(out).model  # measure what sampling will load

    rows = []
    for name, model, file in [("float32", original.model, float_file), ("int8", reloaded, out)]:
        loss = validation_loss(model, val_ids)
        rows.append((name, file.stat().st_size / 1e6, parameter_bytes(model) / 1e6, loss, loss / math.log(2),
                     generation_speed(model)))
    print(f"{source}: checkpoint file {source.stat().st_size / 1e6:.2f} MB (with optimizer state)")
    print("| weights | file MB | parameter MB | val loss | val bpc | generation chars/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, size, memory, loss, bpc, speed in rows:
        print(f"| {name} | {size:.2f} | {memory:.2f} | {loss:.4f} | {bpc:.4f} | {speed:,.0f} |")
    print(f"size {rows[0][1] / rows[1][1]:.2f}x smaller, val loss {rows[1][3] - rows[0][3]:+.4f}; wrote {out}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
