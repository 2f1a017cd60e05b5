import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from charlm.core.generation import generate, pick_next, visible
from charlm.inference.torch_runner import TorchRunner
from charlm.models import build_model

# The CUDA cases run only where a GPU is visible (never in CI); they check the same promises there.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def tiny(name, window=40, device="cpu"):
    torch.manual_seed(0)
    if name == "cnn":
        config = dict(name="cnn", n_layer=4, n_embd=16, block_size=window, dilation_cycle=3)
    elif name == "gpt_blocks":  # every block option that changes the forward pass
        config = dict(name="gpt", n_layer=2, n_head=2, n_embd=16, block_size=window, pos_encoding="rope",
                      norm_type="rmsnorm", qk_norm=True, activation="swiglu", logit_softcap=5.0)
    else:
        config = dict(name="gpt", n_layer=2, n_head=2, n_embd=16, block_size=window,
                      pos_encoding="rope" if name == "gpt_rope" else "learned")
    return build_model(config, vocab_size=11).to(device).eval()


def greedy(runner, prompt, steps, use_cache=True):
    """The greedy continuation (B, steps) of prompt ids (B, T0)."""
    return np.stack(list(generate(runner, prompt, steps, temperature=0, use_cache=use_cache)), axis=1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["cnn", "gpt", "gpt_rope", "gpt_blocks"])
def test_cached_greedy_generation_equals_full_recomputation(name, device):
    model = tiny(name, device=device)
    runner = TorchRunner(model)
    prompt = np.random.default_rng(0).integers(11, size=(2, 3))
    steps = model.block_size - 3  # up to a full window: where cached and recomputed must agree exactly
    cached = greedy(runner, prompt, steps)
    full = greedy(runner, prompt, steps, use_cache=False)
    assert np.array_equal(cached, full)

    ids = torch.as_tensor(np.concatenate([prompt, cached], axis=1), device=device)  # (2, 40)
    with torch.no_grad():
        reference = model(ids)  # (2, 40, V)
        logits, cache = model.forward_cached(ids[:, :3], None)
        stepwise = [logits]
        for t in range(3, ids.shape[1]):
            logits, cache = model.forward_cached(ids[:, t : t + 1], cache)
            stepwise.append(logits)
    torch.testing.assert_close(torch.cat(stepwise, dim=1), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["gpt", "gpt_rope"])
def test_compiled_cached_step_matches_full_recomputation(name, device):
    """The compiled one-character step (on CPU frozen weights and Inductor's own C++ products, on a
    GPU a CUDA graph) gives the same greedy text and, step by step, the same logits as recomputing
    everything eagerly."""
    counters.clear()
    model = tiny(name, window=16, device=device)  # the window of the tests below: Inductor compiles it once
    runner = TorchRunner(model, compile=True)
    prompt = np.random.default_rng(0).integers(11, size=(2, 3))
    steps = model.block_size - 3
    cached = greedy(runner, prompt, steps)
    full = greedy(TorchRunner(model), prompt, steps, use_cache=False)
    assert np.array_equal(cached, full)
    assert runner.compiled_batches == {2}  # it compiled: no silent fall back to eager

    ids = np.concatenate([prompt, cached], axis=1)  # (2, 16)
    with torch.inference_mode():
        reference = model(torch.as_tensor(ids, device=device)).cpu().numpy()  # (2, 16, V)
    logits, cache = runner.forward_cached(ids[:, :3], None)  # the prompt runs eagerly
    with torch._dynamo.config.patch(error_on_recompile=True):  # one graph serves every position
        for t in range(3, ids.shape[1]):
            logits, cache = runner.forward_cached(ids[:, t : t + 1], cache)  # compiled
            np.testing.assert_allclose(logits, reference[:, t], atol=1e-5, rtol=0)
    assert counters["inductor"]["cudagraph_skips"] == 0  # on a GPU, the step really ran as a CUDA graph


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_generation_past_the_window_and_again_writes_the_eager_text(device):
    """Texts longer than the window restart the cache, and every text starts a new one: the compiled
    runner reuses one cache for all of them, and stale slots from earlier text stay hidden."""
    model = tiny("gpt", window=16, device=device)
    runner, eager = TorchRunner(model, compile=True), TorchRunner(model)
    prompt = np.random.default_rng(1).integers(11, size=(2, 3))
    for _ in range(2):
        compiled = greedy(runner, prompt, 50)
        assert np.array_equal(compiled, greedy(eager, prompt, 50))
    assert list(runner.caches) == [2] and runner.compiled_batches == {2}


@pytest.mark.parametrize("device", DEVICES)
def test_interleaved_generations_on_one_compiled_runner_fail_rather_than_mix(device):
    """Both would write the runner's one cache; the generation whose cache was taken must stop."""
    model = tiny("gpt", window=16, device=device)
    runner = TorchRunner(model, compile=True)
    prompt = np.random.default_rng(1).integers(11, size=(2, 3))
    first, second = (generate(runner, prompt, 50, temperature=0) for _ in range(2))
    next(first), next(first)  # the prompt, then the compiled step
    next(second)  # starts over in the same buffers
    with pytest.raises(RuntimeError, match="another generation of the same batch size"):
        next(first)
    rest = np.stack(list(second), axis=1)  # the newer one carries on, undisturbed
    assert np.array_equal(rest, greedy(TorchRunner(model), prompt, 50)[:, 1:])


def test_compile_on_a_model_without_a_step_warns_and_generates_eagerly(capsys):
    model = tiny("cnn")
    runner = TorchRunner(model, compile=True)
    assert "warning: compile=true: DilatedCNN has no compilable step, generating eagerly" in capsys.readouterr().err
    prompt = np.zeros((1, 3), dtype=np.int64)
    out = [int(t[0]) for t in generate(runner, prompt, 20, temperature=0)]
    assert out == [int(t[0]) for t in generate(TorchRunner(model), prompt, 20, temperature=0)]


@pytest.mark.parametrize("name", ["cnn", "gpt", "gpt_rope"])
def test_generation_slides_past_the_window(name):
    runner = TorchRunner(tiny(name, window=16))
    prompt = np.zeros((1, 20), dtype=np.int64)  # already longer than the window
    for use_cache in (True, False):
        out = list(generate(runner, prompt, 50, rng=np.random.default_rng(0), use_cache=use_cache))
        assert len(out) == 50 and all(0 <= int(t[0]) < 11 for t in out)


def test_greedy_picks_the_largest_logit():
    logits = np.array([[0.1, 3.0, -1.0], [2.0, 0.0, 1.9]])
    assert pick_next(logits, temperature=0).tolist() == [1, 0]


def test_sampling_follows_the_distribution_and_the_seed():
    logits = np.log(np.array([[0.7, 0.2, 0.1]]))
    draws = np.array([pick_next(logits, rng=np.random.default_rng(i))[0] for i in range(4000)])
    assert np.allclose(np.bincount(draws, minlength=3) / 4000, [0.7, 0.2, 0.1], atol=0.03)
    a = [pick_next(logits, rng=np.random.default_rng(5))[0] for _ in range(3)]
    assert a == [pick_next(logits, rng=np.random.default_rng(5))[0] for _ in range(3)]


def test_top_k_and_top_p_cut_the_tail():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 2))
    rng = np.random.default_rng(0)
    top_k = {int(pick_next(logits, top_k=2, rng=rng)[0]) for _ in range(500)}
    assert top_k == {0, 1}
    top_p = {int(t) for _ in range(500) for t in pick_next(logits, top_p=0.75, rng=rng)}
    assert top_p == {0, 1}  # 0.5 + 0.3 reaches 0.75: the rest is dropped
    assert {int(pick_next(logits, top_p=0.1, rng=rng)[0]) for _ in range(100)} == {0}  # the top one always stays


def test_samples_are_shown_with_control_characters_as_their_pictures():
    """What the run summary and TensorBoard show of a sample: a byte-level model can write any byte, and
    an escape or a carriage return printed as is would recolour the terminal or overwrite the line."""
    every_byte = "".join(map(chr, range(256)))
    shown = visible(every_byte)
    assert [c for c in shown if ord(c) < 32 or ord(c) == 127] == ["\t", "\n"]
    assert shown[0] == "␀" and shown[27] == "␛" and shown[13] == "␍" and shown[127] == "␡"
    assert shown[32:127] == every_byte[32:127] and shown[128:] == every_byte[128:]
    assert visible("RÖMEO 🌹:\n\té") == "RÖMEO 🌹:\n\té"
    assert visible("ROMEO:\r\nBut soft\r") == "ROMEO:\r\nBut soft␍"  # a Windows line end stays a line end
