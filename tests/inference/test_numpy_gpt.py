"""The NumPy engine against the torch GPT, the portable export, and sampling without torch."""

import json
import math
import subprocess
import sys

import forked
import numpy as np
import pytest
import torch
from conftest import CONF, ROOT, refusal, run_script

from charlm.core.errors import CharLMError
from charlm.core.export_format import read_export, write_export
from charlm.core.generation import generate
from charlm.inference.checkpoint import load_model
from charlm.inference.export import export
from charlm.inference.export import main as export_main
from charlm.inference.numpy_gpt import NumpyGPT, load_export, random_weights
from charlm.inference.torch_runner import TorchRunner
from charlm.models import build_model

CONFIGS = {
    "relu, no qkv bias": dict(activation="relu", qkv_bias=False),
    "gelu, tied, no bias": dict(activation="gelu", tie_weights=True, bias=False),
    "sinusoidal positions": dict(pos_encoding="sinusoidal"),
    "rotary positions": dict(pos_encoding="rope"),
    "xavier init": dict(init="xavier"),
    "post-LayerNorm": dict(norm="post"),
    "RMSNorm, QK-norm, ReLU², soft-capped logits": dict(norm_type="rmsnorm", qk_norm=True, activation="relu2",
                                                        logit_softcap=10.0, pos_encoding="rope"),
    "post-RMSNorm, QK-norm": dict(norm="post", norm_type="rmsnorm", qk_norm=True),
    "SwiGLU": dict(activation="swiglu", pos_encoding="rope"),
}


def torch_and_numpy(**options):
    torch.manual_seed(0)
    config = dict(name="gpt", n_layer=3, n_head=4, n_embd=32, block_size=48) | options
    model = build_model(config, vocab_size=65).eval()
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    return model, NumpyGPT(config, weights)


@pytest.mark.parametrize("options", CONFIGS.values(), ids=list(CONFIGS))
def test_numpy_logits_match_torch(options):
    model, numpy_model = torch_and_numpy(**options)
    ids = np.random.default_rng(0).integers(65, size=(3, 48))
    with torch.no_grad():
        expected = model(torch.as_tensor(ids)).numpy()
    logits = numpy_model.forward(ids)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    # float32 all the way: one NumPy float64 scalar upcasts the activations, and every matrix
    # product then converts its weights (this once made generation 8x slower at 10.7M).
    assert logits.dtype == np.float32


def test_numpy_cache_matches_its_own_full_pass():
    _, numpy_model = torch_and_numpy()
    ids = np.random.default_rng(1).integers(65, size=(2, 30))
    full = numpy_model.forward(ids)
    logits, cache = numpy_model.forward_cached(ids[:, :10], None)
    steps = [logits]
    for t in range(10, 30):
        logits, cache = numpy_model.forward_cached(ids[:, t : t + 1], cache)
        steps.append(logits)
    np.testing.assert_allclose(np.stack(steps[1:], axis=1), full[:, 10:], atol=1e-5, rtol=0)
    np.testing.assert_allclose(steps[0], full[:, 9], atol=1e-5, rtol=0)


def test_dropout_only_in_training_mode_passes():
    _, numpy_model = torch_and_numpy(dropout=0.2)
    ids = np.random.default_rng(2).integers(65, size=(1, 20))
    inference = numpy_model.forward(ids)
    assert np.array_equal(inference, numpy_model.forward(ids))  # deterministic without an rng
    train_a = numpy_model.forward(ids, rng=np.random.default_rng(3))
    train_b = numpy_model.forward(ids, rng=np.random.default_rng(3))
    assert np.array_equal(train_a, train_b) and not np.allclose(train_a, inference)


@pytest.mark.parametrize("init", ["gpt2", "xavier"])
def test_initialisations_in_numpy_and_torch(init):
    config = dict(name="gpt", n_layer=2, n_head=2, n_embd=64, block_size=16, init=init)
    numpy_w = random_weights(config, vocab_size=65, init=init)["blocks.0.mlp.fc.weight"]  # (256, 64)
    torch.manual_seed(0)
    torch_w = build_model(config, vocab_size=65).blocks[0].mlp.fc.weight.detach().numpy()
    for w in (numpy_w, torch_w):
        if init == "xavier":
            limit = math.sqrt(6 / (64 + 256))
            assert np.abs(w).max() <= limit and abs(w.std() - limit / math.sqrt(3)) < 0.01
        else:
            assert abs(w.std() - 0.02) < 0.002
    model = NumpyGPT(config, random_weights(config, 65, init=init))  # a model built from scratch runs
    assert model.forward(np.zeros((1, 5), dtype=np.int64)).shape == (1, 5, 65)


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    return export(trained_run, "npz", tmp_path_factory.mktemp("export") / "tiny.npz")


def test_export_loads_back_into_torch_exactly(trained_run, exported):
    original, restored = load_model(trained_run), load_model(exported)
    ids = torch.randint(65, (2, 16))
    with torch.no_grad():
        assert torch.equal(original.model(ids), restored.model(ids))
    assert restored.vocab.chars == original.vocab.chars and restored.model_config == original.model_config


def test_numpy_greedy_generation_equals_torch_for_200_characters(trained_run, exported):
    torch_runner = TorchRunner(load_model(trained_run).model)
    numpy_model, vocab = load_export(exported)
    prompt = np.array([vocab.encode("ROMEO:\n")])
    from_torch = [int(t[0]) for t in generate(torch_runner, prompt, 200, temperature=0)]
    from_numpy = [int(t[0]) for t in generate(numpy_model, prompt, 200, temperature=0)]
    assert from_numpy == from_torch


@pytest.mark.parametrize(("overrides", "engine"), [
    ([], "NumpyGPT"),  # one text, on the CPU: the NumPy engine
    (["num_samples=2"], "TorchRunner"), (["compile=true"], "TorchRunner"), (["backend=torch"], "TorchRunner"),
    (["backend=numpy"], "NumpyGPT"),
])
def test_sampling_picks_the_faster_engine(trained_run, exported, overrides, engine):
    from hydra import compose, initialize_config_dir

    from charlm.inference.sample import open_model

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for ckpt in (exported, trained_run):  # an export, or a checkpoint converted in memory
            runner, vocab, what = open_model(compose("sample", overrides=[f"ckpt={ckpt}", *overrides]))
            assert type(runner).__name__ == engine and vocab.chars == load_model(trained_run).vocab.chars
            assert ("NumPy engine" in what) == (engine == "NumpyGPT")


def test_a_cnn_samples_on_torch_and_only_backend_numpy_refuses_it(tmp_path):
    """As an export or as a checkpoint: auto runs it on torch (eagerly, also with compile=true); numpy names
    the model it cannot run."""
    from hydra import compose, initialize_config_dir

    from charlm.inference.sample import open_model

    config = dict(name="cnn", n_layer=2, n_embd=16, block_size=16)
    model = build_model(config, vocab_size=3)
    export = tmp_path / "cnn.npz"
    write_export(export, config, "abc", {name: value.numpy() for name, value in model.state_dict().items()})
    checkpoint = tmp_path / "cnn.ckpt"
    torch.save({"hyper_parameters": {"model": config, "vocab": "abc"},
                "state_dict": {f"model.{name}": value for name, value in model.state_dict().items()}}, checkpoint)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for path in (export, checkpoint):
            for extra in ([], ["compile=true"]):  # backend=auto; a CNN has no step to compile: it runs eagerly
                runner, vocab, what = open_model(compose("sample", overrides=[f"ckpt={path}", *extra]))
                assert type(runner).__name__ == "TorchRunner" and vocab.chars == "abc" and what.endswith("(torch)")
            with pytest.raises(CharLMError, match=f"^the NumPy engine runs GPT models.*; {path} holds a cnn model"):
                open_model(compose("sample", overrides=[f"ckpt={path}", "backend=numpy"]))


@pytest.mark.parametrize("source", ["export, backend=numpy", "run folder, backend=auto"])
def test_sampling_on_the_numpy_engine_imports_no_torch(trained_run, exported, tmp_path, source):
    """An export, or a GPT's training checkpoint (read by charlm.core.internals): the same text as the
    export gives with torch importable."""
    args = ["backend=numpy", f"ckpt={exported}"] if source.startswith("export") else [f"ckpt={trained_run}"]
    # torch made unimportable: any `import torch` on this path raises ImportError.
    code = ("import sys, runpy; sys.modules['torch'] = None; "
            f"sys.argv = ['sample.py', *{args!r}, 'num_tokens=50', 'seed=1']; "
            f"runpy.run_path({str(ROOT / 'sample.py')!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "(NumPy engine)" in result.stderr and len(result.stdout) == 1 + 50 + 1  # newline prompt, 50 characters
    with_torch = run_script("sample.py", "backend=numpy", f"ckpt={exported}", "num_tokens=50", "seed=1")
    assert with_torch.stdout == result.stdout


def test_a_checkpoint_only_torch_can_read_still_runs_on_the_numpy_engine(trained_run, tmp_path):
    """bfloat16 weights (NumPy has no bfloat16): torch reads the file, and the GPT still runs on NumPy."""
    from hydra import compose, initialize_config_dir

    from charlm.inference.numpy_gpt import load_checkpoint
    from charlm.inference.sample import open_model

    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["state_dict"] = {k: v.to(torch.bfloat16) for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, tmp_path / "bf16.ckpt")
    assert load_checkpoint(tmp_path / "bf16.ckpt") is None
    assert load_checkpoint(trained_run / "checkpoints" / "last.ckpt") is not None
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        runner, vocab, what = open_model(compose("sample", overrides=[f"ckpt={tmp_path / 'bf16.ckpt'}"]))
    assert type(runner).__name__ == "NumpyGPT" and what.endswith("bf16.ckpt (NumPy engine)")


def test_export_command_and_its_errors(trained_run, tmp_path, capsys, monkeypatch):
    result = forked.run(["-m", "charlm", "export", trained_run, "--out", tmp_path / "m.npz"], ROOT)
    assert result.returncode == 0 and result.stdout.strip() == str(tmp_path / "m.npz")
    monkeypatch.setenv("HOME", str(tmp_path))  # `--out=~/...`: the shell leaves that `~` to the tool
    export_main([str(trained_run), "--out=~/home.npz"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "home.npz")
    meta, arrays = read_export(tmp_path / "m.npz")
    loaded = load_model(trained_run)
    assert meta["vocab"] == loaded.vocab.chars and meta["model"] == loaded.model_config
    assert arrays.keys() == loaded.model.state_dict().keys()
    for args, message in [
        ([str(trained_run), "--format", "onnx"], "unknown export format 'onnx'; supported: npz"),
        ([str(tmp_path / "missing.ckpt")], "checkpoint not found"),
        ([str(trained_run), "--out", str(tmp_path / "no" / "such" / "dir.npz")], "output folder does not exist"),
    ]:
        error = refusal(export_main, args, capsys)
        assert message in error and error.count("\n") == 1


def test_mismatched_or_corrupt_exports_get_clear_errors(exported, tmp_path):
    meta, arrays = read_export(exported)
    meta["model"]["n_embd"] = 32  # the weights are 16 wide
    write_export(tmp_path / "wrong.npz", meta["model"], meta["vocab"], arrays)
    with pytest.raises(CharLMError, match="do not match its model config"):
        load_model(tmp_path / "wrong.npz")
    (tmp_path / "cut.npz").write_bytes(exported.read_bytes()[:3000])
    with pytest.raises(CharLMError, match="not a readable charlm export"):
        load_export(tmp_path / "cut.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3), __meta__=np.array(json.dumps({"format": "else"})))
    with pytest.raises(CharLMError, match="not a charlm export"):
        load_export(tmp_path / "other.npz")
