"""`sample.py`'s work: open a model (torch checkpoint, or NumPy export) and stream generated text.

The NumPy engine never imports torch, also when it runs a GPT's training checkpoint.
"""

import sys
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from charlm.core.checks import available_ram
from charlm.core.errors import CharLMError
from charlm.core.export_format import is_export, read_export
from charlm.core.generation import generate
from charlm.core.inference_config import SampleConfig
from charlm.core.run_config import group_settings
from charlm.core.run_folder import find_checkpoint, newest_run
from charlm.core.sweep import job_label
from charlm.inference.numpy_gpt import NumpyGPT, from_export, load_checkpoint


def open_model(cfg: DictConfig):
    """(runner, vocabulary, what runs) for the configured backend. `auto` runs a GPT on the NumPy engine
    when it generates one text at a time on the CPU, uncompiled: there the NumPy engine's matrix-vector
    products use every core and torch's use one (docs/performance.md); torch runs everything else,
    the CNN included. `numpy` runs any float GPT there, export or checkpoint."""
    export = cfg.ckpt is not None and is_export(cfg.ckpt)
    numpy_engine = cfg.backend == "numpy" or (
        cfg.backend == "auto" and cfg.num_samples == 1 and not cfg.compile and str(cfg.device).split(":")[0] == "cpu")
    if numpy_engine and export:
        meta, arrays = read_export(cfg.ckpt)
        if cfg.backend == "numpy" or meta["model"].get("name") == "gpt":
            model, vocab = from_export(cfg.ckpt, meta, arrays)
            return model, vocab, f"{cfg.ckpt} (NumPy engine)"
    path = cfg.ckpt if cfg.ckpt is not None else newest_run(Path(cfg.paths["root"]) / "runs")
    if numpy_engine:  # a GPT's checkpoint without importing torch, where the file allows it
        file = find_checkpoint(path)
        if (opened := load_checkpoint(file)) is not None:
            return *opened, f"{file} (NumPy engine)"
    from charlm.inference.checkpoint import load_model, numpy_weights  # torch: imported only for this path
    from charlm.inference.torch_runner import TorchRunner, check_device

    check_device("device", cfg.device)
    loaded = load_model(path)
    if numpy_engine and loaded.model_config["name"] == "gpt" and loaded.quantization is None:
        return NumpyGPT(loaded.model_config, numpy_weights(loaded.model)), loaded.vocab, f"{loaded.path} (NumPy engine)"
    if cfg.backend == "numpy":
        holds = "int8 weights" if loaded.quantization else f"a {loaded.model_config['name']} model"
        raise CharLMError(f"the NumPy engine runs GPT models with float weights; {loaded.path} holds {holds} "
                          "(backend=torch runs it)")
    runner = TorchRunner(loaded.model.to(cfg.device), compile=cfg.compile)
    return runner, loaded.vocab, f"{loaded.path} (torch{', compiled' if runner.compiled_step else ''})"


def check_samples_fit(runner, num_samples: int, prompt_length: int) -> None:
    """Refuse in one line a batch of GPT samples whose caches cannot fit in RAM, rather than being killed
    by the kernel or stopped by an allocation deep inside the model."""
    config = runner.config if isinstance(runner, NumpyGPT) else vars(runner.model.config)
    free = available_ram()
    if "n_head" not in config or getattr(getattr(runner, "device", None), "type", "cpu") != "cpu" or free is None:
        return
    block, width, window = config["block_size"], config["n_embd"], min(prompt_length, config["block_size"])
    # float32: each layer's keys and values over the whole window, then the prompt's pass (scores, activations)
    need = 4 * num_samples * (2 * config["n_layer"] * block * width + 2 * config["n_head"] * window**2
                              + 8 * window * width)
    if need > free:
        raise CharLMError(f"num_samples={num_samples} needs about {need / 2**30:,.1f} GiB for this model's caches, "
                          f"but {free / 2**30:,.1f} GiB is available in RAM; lower num_samples")


def sample(cfg: DictConfig) -> None:
    cfg = group_settings(SampleConfig, cfg)  # every option checked
    runner, vocab, what = open_model(cfg)
    prompt = cfg.prompt if cfg.prompt is not None else "\n" if "\n" in vocab.index else vocab.chars[0]
    encoded = vocab.encode(prompt)
    check_samples_fit(runner, cfg.num_samples, len(encoded))
    job = job_label()  # in a sweep (-m): which of its samples this is
    print(f"sampling from {what}" + (f"; {job}" if job else ""), file=sys.stderr, flush=True)
    prompt_ids = np.array([encoded] * cfg.num_samples, dtype=np.int64)
    rng = np.random.default_rng(cfg.seed)  # seed None: fresh entropy each call
    steps = generate(runner, prompt_ids, cfg.num_tokens, cfg.temperature, cfg.top_k, cfg.top_p, rng)
    out = sys.stdout
    if cfg.num_samples == 1:  # stream character by character
        out.write(prompt)
        text_of = vocab.streaming_decoder()
        for next_id in steps:
            out.write(text_of(int(next_id[0])))
            out.flush()
        out.write("\n")
    else:  # one batch; print each sample when all are done
        columns = np.stack(list(steps), axis=1) if cfg.num_tokens else prompt_ids[:, :0]  # (N, num_tokens)
        for i, row in enumerate(columns.tolist()):
            if i:
                out.write("\n" + "-" * 40 + "\n")
            out.write(prompt + vocab.decode(row) + "\n")
    out.flush()
