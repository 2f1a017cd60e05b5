
import numpy as np
import pytest
import torch
from conftest import TINY, sample_in_process

from charlm.core.corpus import resolve_path
from charlm.core.errors import CharLMError
from charlm.core.generation import generate
from charlm.inference import quantize
from charlm.inference.checkpoint import load_model
from charlm.inference.torch_runner import TorchRunner
from charlm.models import build_model
from charlm.models.int8 import Int8Conv1d, Int8Linear, quantize_model, quantize_weight


def test_per_channel_rounding_error_is_at_most_half_a_step():
    weight = torch.randn(48, 16, 3) * torch.linspace(0.01, 5, 48)[:, None, None]  # very different channels
    values, scale = quantize_weight(weight)
    assert values.dtype == torch.int8 and scale.shape == (48,)
    assert torch.equal(values.flatten(1).abs().amax(1), torch.full((48,), 127, dtype=torch.int8))
    error = (values.float() * scale[:, None, None] - weight).abs()
    assert (error <= scale[:, None, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("name", ["gpt", "cnn"])
def test_quantized_models_stay_close_and_keep_their_cache(name):
    torch.manual_seed(0)
    config = (dict(name="gpt", n_layer=2, n_head=2, n_embd=32, block_size=24) if name == "gpt" else
              dict(name="cnn", n_layer=3, n_embd=32, block_size=24))
    model = build_model(config, vocab_size=11).eval()
    ids = torch.randint(11, (2, 24))
    with torch.no_grad():
        before = model(ids)
        quantize_model(model)
        after = model(ids)
    kinds = {type(m) for m in model.modules()}
    assert (Int8Linear if name == "gpt" else Int8Conv1d) in kinds
    assert type(model.head) is torch.nn.Linear  # the head stays float by default
    assert (after - before).abs().max() < 0.05 * before.abs().max()
    runner = TorchRunner(model)  # the cached path works on int8 weights too
    prompt = np.zeros((1, 2), dtype=np.int64)
    cached = [int(t[0]) for t in generate(runner, prompt, 20, temperature=0)]
    assert cached == [int(t[0]) for t in generate(runner, prompt, 20, temperature=0, use_cache=False)]


def test_quantize_scores_the_runs_own_text_and_writes_only_its_output(train_here, tmp_path, capsys):
    """Like evaluate.py: the validation split of the text the run recorded (here not Tiny Shakespeare's
    default split), so the float32 loss is the run's own best val loss; the int8 file keeps those data
    settings, and nothing is written but --out."""
    text = tmp_path / "text.txt"
    text.write_text(resolve_path(None).read_text()[:60_000])
    best, run = train_here(*TINY, "max_steps=40", "eval_interval=20", f"data.path={text}",
                           "data.train_fraction=0.8", run_dir=tmp_path / "run")
    before = sorted(p for p in tmp_path.rglob("*"))
    out = tmp_path / "tiny.int8.pt"
    capsys.readouterr()
    quantize.main([str(run), "--out", str(out)])  # (its command line: tests/training/test_reliability.py)
    printed = capsys.readouterr()
    assert f"scoring the validation split of {text} (12,000 tokens)" in printed.err
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in printed.out.splitlines()
            if line.startswith("| float32") or line.startswith("| int8")}
    float_loss, int8_loss = float(rows["float32"][2]), float(rows["int8"][2])
    assert float_loss == pytest.approx(best, abs=1e-4)  # printed to 4 decimals
    assert abs(int8_loss - float_loss) < 0.01
    assert float(rows["int8"][1]) < float(rows["float32"][1])  # parameter memory shrinks
    assert sorted(p for p in tmp_path.rglob("*")) == sorted([*before, out])  # --out, and nothing else
    loaded = load_model(out)
    assert loaded.quantization["scheme"] == "int8-weight-only-per-channel"
    assert loaded.data["path"] == str(text) and loaded.data["train_fraction"] == 0.8
    assert loaded.model.blocks[0].attn.qkv.qweight.dtype == torch.int8
    assert len(sample_in_process(out, num_tokens=30)) == 1 + 30 + 1  # it samples
    with pytest.raises(CharLMError, match=f"runs GPT models with float weights; {out} holds int8 weights"):
        sample_in_process(out, 30, "T", "backend=numpy")  # auto runs it on torch
    with pytest.raises(CharLMError, match="already quantized"):
        quantize.main([str(out)])
