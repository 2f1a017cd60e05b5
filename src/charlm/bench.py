"""Speed benchmarks that print a table and save it as Markdown and JSON.

    python -m charlm.bench generation [--presets gpt_0.2m,cnn_0.2m] [--tokens 500] [--batch 1,8]

Models are built from the experiment presets with random weights (speed does not depend on them)
and the Tiny Shakespeare vocabulary size. Every figure is a median over repeats.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from charlm.errors import CharLMError
from charlm.models import build_model, count_parameters
from charlm.sampling import generate

VOCAB_SIZE = 65
CONF = Path(__file__).resolve().parents[2] / "conf"


def preset_config(name: str, *overrides: str):
    """Compose the training config of an experiment preset, as `train.py experiment=NAME` would."""
    from hydra import compose, initialize_config_dir

    from charlm.cli import register_resolvers

    register_resolvers()
    if not (CONF / "experiment" / f"{name}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
        raise CharLMError(f"unknown preset {name!r}; presets: {known}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[f"experiment={name}", *overrides])


def preset_model(name: str) -> torch.nn.Module:
    cfg = preset_config(name)
    return build_model(OmegaConf.to_container(cfg.model, resolve=True), vocab_size=VOCAB_SIZE)


def time_generation(model, batch: int, tokens: int, use_cache: bool, repeats: int) -> float:
    """Median tokens/s (per sequence, i.e. characters each sample gains per second)."""
    prompt = torch.zeros(batch, 1, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in generate(model, prompt, tokens, temperature=1.0, generator=generator, use_cache=use_cache):
            pass
        rates.append(tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_generation(presets: list[str], tokens: int, batches: list[int], repeats: int) -> list[dict]:
    rows = []
    for name in presets:
        model = preset_model(name).eval()
        for batch in batches:
            full = time_generation(model, batch, tokens, use_cache=False, repeats=repeats)
            cached = time_generation(model, batch, tokens, use_cache=True, repeats=repeats)
            rows.append({
                "preset": name, "parameters": count_parameters(model), "batch": batch, "new_tokens": tokens,
                "recompute_tokens_per_s": full, "cached_tokens_per_s": cached, "speedup": cached / full,
            })
            print_row(rows[-1])
    return rows


def machine() -> str:
    """CPU (or GPU) model, core count, torch version and threads: enough to compare two tables."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        cpuinfo = Path("/proc/cpuinfo")
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")] if cpuinfo.is_file() else []
        device = f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return f"{device}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def print_row(row: dict) -> None:
    print("  ".join(f"{k}={v:,.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def markdown_table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    for row in rows:
        cells = [f"{row[k]:,.1f}" if isinstance(row[k], float) else f"{row[k]:,}" if isinstance(row[k], int)
                 else str(row[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save(rows: list[dict], kind: str, out_dir: Path, command: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    header = f"`{command}` on {machine()}\n\n"
    (out_dir / f"{kind}.md").write_text(header + table + "\n")
    (out_dir / f"{kind}.json").write_text(json.dumps({"command": command, "machine": machine(), "rows": rows},
                                                     indent=2) + "\n")
    print("\n" + header + table)
    print(f"\nsaved {out_dir / kind}.md and .json")


def positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m charlm.bench", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["generation"])
    parser.add_argument("--presets", default="gpt_0.2m,cnn_0.2m,gpt_2.7m,cnn_2.7m,gpt_10.7m")
    parser.add_argument("--tokens", type=int, default=500, help="new characters per sample")
    parser.add_argument("--batch", type=positive_ints, default=[1, 8], help="batch sizes, e.g. 1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        raise CharLMError("--tokens, --repeats and --threads must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = [p for p in args.presets.split(",") if p]
    command = "python -m charlm.bench " + " ".join(argv)
    rows = bench_generation(presets, args.tokens, args.batch, args.repeats)
    save(rows, args.kind, args.out, command)


if __name__ == "__main__":
    from charlm.cli import run_cli

    run_cli(main, sys.argv[1:])
