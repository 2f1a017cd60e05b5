"""Speed benchmarks that print a table and save it as Markdown and JSON (under outputs/bench/).

    python -m charlm bench training     # Lightning loop vs a bare PyTorch loop, MFU, peak memory
    python -m charlm bench generation   # tokens/s with and without caches
    python -m charlm bench data         # a large corpus through the token store, against nanoGPT-style encoding
    python -m charlm bench optimizer    # where a step's time goes: forward + backward, AdamW, Muon per dtype
    python -m charlm bench speedrun     # wall time to validation losses, optionally beside nanoGPT's own loop
    python -m charlm bench pictures     # what the pictures training draws at each validation cost a run
    python -m charlm bench sample       # the whole sample.py process, optionally beside nanoGPT's generate()

This module only reads the arguments, so --help and a mistake are answered before torch and Lightning
load; the benchmarks themselves are in bench_cases.py and bench_*.py.
"""

import argparse
import sys
from pathlib import Path

from charlm.core.cli import run_cli
from charlm.core.errors import CharLMError
from charlm.core.prompts import user_path


def positive_list(cast, kind: str):
    """An argparse type: comma-separated positive finite values of `cast` ("integers", "numbers")."""

    def parse(text: str) -> list:
        try:
            values = [cast(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind}, got {text!r}") from None
        if not all(0 < v < float("inf") for v in values):
            raise argparse.ArgumentTypeError(f"expected positive {kind}, got {text!r}")
        return values

    return parse


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="charlm bench", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["training", "generation", "data", "optimizer", "speedrun", "pictures",
                                         "sample"])
    parser.add_argument("--case", action="append", help="training, optimizer, speedrun, pictures, sample: a preset "
                        "plus overrides, e.g. 'gpt_2.7m block_size=128 batch_size=32' (repeatable; default: the "
                        "standard cases)")
    parser.add_argument("--steps", type=int, default=150,
                        help="training: steps per loop and round; optimizer: calls per part and round")
    parser.add_argument("--rounds", type=int, default=2, help="training, optimizer, sample: alternating rounds")
    parser.add_argument("--presets", default="gpt_0.2m,cnn_0.2m,gpt_2.7m,cnn_2.7m,gpt_10.7m",
                        help="generation: comma-separated presets")
    parser.add_argument("--tokens", type=int, default=500, help="generation, sample: new characters per sample")
    parser.add_argument("--batch", type=positive_list(int, "integers"), default=[1, 8],
                        help="generation: batch sizes, e.g. 1,8")
    parser.add_argument("--repeats", type=int, default=3, help="generation: runs per measurement")
    parser.add_argument("--numpy", action="store_true", help="generation: also time the NumPy engine (GPT presets)")
    parser.add_argument("--compile", action="store_true",
                        help="generation: also time torch with a compiled cached step (GPT presets)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="generation: where torch runs (default: cuda if available)")
    parser.add_argument("--megabytes", type=int, default=1000, help="data: size of the generated UTF-8 corpus")
    parser.add_argument("--no-baseline", action="store_true",
                        help="data: skip nanoGPT-style encoding (slow and memory-hungry on large corpora)")
    parser.add_argument("--thresholds", type=positive_list(float, "finite numbers"), default=None,
                        help="speedrun: validation losses to time, comma-separated (default: THRESHOLDS in "
                        "bench_speedrun.py)")
    parser.add_argument("--nanogpt", type=user_path, default=None,
                        help="speedrun: a nanoGPT checkout; its own train.py runs first, on the same text; "
                        "sample: its generate() at the same shape runs in the same rounds")
    parser.add_argument("--nanogpt-args", default=None,
                        help="speedrun: arguments to nanoGPT's train.py (default: its 0.2M model on the CPU, "
                        "at gpt_0.2m_published's shape and budget)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--out", type=user_path, default=Path("outputs/bench"))
    args = parser.parse_args(argv)
    if min(args.tokens, args.repeats, args.steps, args.rounds, 1 if args.threads is None else args.threads) < 1:
        raise CharLMError("--tokens, --repeats, --steps, --rounds and --threads must be positive")
    if args.steps < 20:
        raise CharLMError("--steps must be at least 20 (the first tenth is warm-up)")
    if args.kind == "data" and args.megabytes < 2:
        raise CharLMError("--megabytes must be at least 2")
    return args


def main(argv: list[str]) -> None:
    args = parse_arguments(argv)
    from charlm.tools.bench_cases import run_benchmark

    command = "python -m charlm bench " + " ".join(f"'{a}'" if " " in a else a for a in argv)
    run_benchmark(args, command)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
