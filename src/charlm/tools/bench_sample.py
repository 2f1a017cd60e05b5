"""The `sample.py` benchmark (`python -m charlm bench sample`): how long a user waits for text, the whole
`sample.py` process from launch to its last character, on a run folder of each case's preset (one step
of training: speed does not depend on the weights). With `--nanogpt DIR`, nanoGPT's own `generate()` at
the same shape runs in the same rounds, timed alone (its model built, then the call), alternating with
`sample.py` so drifting machine load hits both alike."""

import statistics
import sys
from pathlib import Path

from charlm.core.errors import CharLMError
from charlm.tools.bench_speedrun import launch, train_case

# nanoGPT's model at a run's shape (nanoGPT has learned positions, GELU and LayerNorm whatever the run
# uses: the shape sets the work), float32 on the CPU, sampled as its sample.py does; prints the seconds
# of the generate() call alone.
NANOGPT_GENERATE = """
import sys, time, torch
from model import GPT, GPTConfig
n_layer, n_head, n_embd, block_size, bias, tokens = sys.argv[1:]
config = GPTConfig(n_layer=int(n_layer), n_head=int(n_head), n_embd=int(n_embd), block_size=int(block_size),
                   vocab_size=65, dropout=0.0, bias=bias == "True")
model = GPT(config).eval()
with torch.no_grad():
    start = time.perf_counter()
    model.generate(torch.zeros((1, 1), dtype=torch.long), int(tokens), temperature=0.8, top_k=200)
print(f"generate seconds: {time.perf_counter() - start}")
"""


def nanogpt_seconds(root: Path, settings: dict, tokens: int) -> float:
    """Seconds of nanoGPT's generate() at the shape of a run (its flat settings, as summary.json has them)."""
    if settings["model"] != "gpt":
        raise CharLMError("--nanogpt compares GPT cases only")
    shape = [settings[f"model.{key}"] for key in ("n_layer", "n_head", "n_embd", "block_size", "bias")]
    _, _, lines = launch([sys.executable, "-c", NANOGPT_GENERATE, *map(str, shape), str(tokens)], cwd=root)
    return float(next(line.split(":")[1] for _, line in lines if line.startswith("generate seconds:")))


def sample_case(case: str, tokens: int, rounds: int, nanogpt: Path | None, out_dir: Path) -> dict:
    if nanogpt is not None and not (nanogpt / "model.py").is_file():
        raise CharLMError(f"--nanogpt {nanogpt}: not a nanoGPT checkout (no model.py)")
    # one step of training: speed does not depend on the weights
    run_dir, summary, _, _ = train_case(case, out_dir, "max_steps=1", "data.max_val_tokens=2048",
                                        "callbacks.text_sample.num_tokens=0")
    ours, theirs = [], []
    for _ in range(rounds):
        if nanogpt is not None:
            theirs.append(nanogpt_seconds(nanogpt, summary["settings"], tokens))
        _, seconds, _ = launch([sys.executable, "-m", "charlm.commands", "sample", f"ckpt={run_dir}",
                                f"num_tokens={tokens}", "seed=1"])
        ours.append(seconds)
    row = {"case": case, "parameters": summary["parameters"], "new_tokens": tokens,
           "sample_py_s": statistics.median(ours),
           "sample_py_runs_s": ", ".join(f"{s:.2f}" for s in ours)}
    if theirs:
        row |= {"nanogpt_generate_s": statistics.median(theirs),
                "nanogpt_runs_s": ", ".join(f"{s:.2f}" for s in theirs),
                "nanogpt_over_sample_py": statistics.median(theirs) / statistics.median(ours)}
    return row
