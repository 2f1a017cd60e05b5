"""The schemas of `sample.py` and `evaluate.py` (conf/sample.yaml and conf/evaluate.yaml are presets over
them): each option's type, default, doc and range in one place, as for training (charlm.core.run_config).
Torch-free: the NumPy sampling path never imports torch."""

from dataclasses import dataclass, field
from typing import Any

from charlm.core import checks
from charlm.core.checks import check_knobs, knob
from charlm.core.errors import CharLMError
from charlm.core.vocab import MODES

CHECKPOINT = "a .ckpt file, a .npz export or a run folder (its best checkpoint); null: the newest run"
# Tokens in a scoring batch (validation, evaluate.py) when its size is null: on CPUs a few thousand tokens a
# batch score faster per token than larger batches, whose activations overflow the caches (docs/performance.md).
SCORING_TOKENS = 4096
SCORING_BATCH = f"blocks scored together (null: {SCORING_TOKENS} tokens' worth, {SCORING_TOKENS} // block_size)"


def scoring_blocks(batch_size: int | None, block_size: int) -> int:
    """Blocks per scoring batch: `batch_size`, or SCORING_TOKENS' worth when it is null."""
    return batch_size or max(1, SCORING_TOKENS // block_size)


@dataclass
class SampleConfig:
    ckpt: str | None = knob(None, CHECKPOINT)
    prompt: str | None = knob(None, "text to continue, as the shell passes it (prompt_file=PATH: from a file; "
                              "prompt=-: standard input); null: a newline, or the vocabulary's first character")
    num_tokens: int = knob(500, "characters to generate", low=0)
    temperature: float = knob(0.8, "0: greedy (always the most likely character)")
    top_k: int | None = knob(None, "keep only the k most likely characters")
    top_p: float | None = knob(None, "keep the smallest set of characters whose probability reaches p",
                               low_open=True, high=1)
    seed: int | None = knob(None, "null: different text each call", check=lambda n, v: checks.seed(n, v, True))
    num_samples: int = knob(1, "samples generated together as one batch")
    device: str = knob("cpu", "cpu, cuda, cuda:1, mps, ...")
    compile: bool = knob(False, "torch.compile the GPT's one-character step (a CUDA graph on GPUs): pays for its "
                         "5-35 s compile on GPUs and long samples")
    backend: str = knob("auto", "auto: the NumPy engine for a GPT generating one text on the CPU, uncompiled, "
                        "torch for the rest | torch | numpy (a GPT, export or checkpoint, on the CPU)",
                        choices=("auto", "torch", "numpy"))
    paths: Any = None

    def __post_init__(self):
        check_knobs(self)
        if self.compile and self.backend == "numpy":
            raise CharLMError("compile=true needs backend=torch (the NumPy engine has nothing to compile)")
        if self.backend == "numpy" and self.device.split(":")[0] != "cpu":
            raise CharLMError(f"device={self.device} needs backend=torch (the NumPy engine runs on the CPU)")


@dataclass
class PicturesConfig:
    ckpt: str | None = knob(None, CHECKPOINT)
    prompt: str | None = knob(None, "the text to look at, as the shell passes it (prompt_file=PATH, prompt=-: as "
                              "sample.py); longer than block_size: its last block")
    out: str = knob("attention.png", "the picture to write, in the format its suffix names: .png, .pdf, .svg, ...")
    kind: str = knob("attention", "attention: a GPT's heads, layer by layer | influence: how much each character "
                     "sways the next prediction (any model; a CNN's receptive field)",
                     choices=("attention", "influence"))
    device: str = knob("cpu", "cpu, cuda, cuda:1, mps, ...")
    dpi: int = knob(120, "resolution of the PNG", low=20, high=600)
    paths: Any = None

    def __post_init__(self):
        check_knobs(self)


@dataclass
class RecordedData:
    """The text a run was trained on and how it was cut; null keeps what the run recorded."""

    path: str | None = knob(None, "another text file")
    vocab: str | None = knob(None, "chars | bytes", check=lambda n, v: v is None or checks.choice(n, v, MODES))
    train_fraction: float | None = knob(None, "the first part of the text, which trained", low_open=True, high=1,
                                        high_open=True)
    test_fraction: float | None = knob(None, "the last part, held out for split=test", high=1, high_open=True)
    cache_dir: str | None = knob(None, "the token cache")

    def __post_init__(self):
        check_knobs(self, "data.")


@dataclass
class EvaluateConfig:
    ckpt: str | None = knob(None, CHECKPOINT)
    split: str = knob("val", "val, or test (a run trained with data.test_fraction above 0)", choices=("val", "test"))
    stride: int | None = knob(None, "S: also score sliding windows S characters apart, each character with up to "
                              "block_size of context")
    batch_size: int | None = knob(None, SCORING_BATCH)
    device: str = knob("cpu", "cpu, cuda, cuda:1, mps, ...")
    data: RecordedData = field(default_factory=RecordedData)
    paths: Any = None

    def __post_init__(self):
        if isinstance(self.data, dict):
            self.data = RecordedData(**self.data)
        check_knobs(self)
