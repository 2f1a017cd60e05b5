"""Pictures of what a model looks at: attention maps from the GPT's own forward pass (causal, rows summing
to 1, equal to the NumPy engine's), the CNN's influence confined to its receptive field, the PNG command
and its errors, and the images a training run sends to TensorBoard."""

import subprocess
from dataclasses import asdict

import forked
import matplotlib.image
import numpy as np
import pytest
import torch
from conftest import CONF, ROOT, TINY, TINY_CNN
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from charlm.core.errors import CharLMError
from charlm.inference.checkpoint import numpy_weights
from charlm.inference.numpy_gpt import NumpyGPT
from charlm.inference.pictures import attention_maps, draw, influence
from charlm.models import build_model

GPT_OPTIONS = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 24}


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_attention_maps_are_causal_and_equal_the_numpy_engines(pos_encoding):
    torch.manual_seed(0)
    model = build_model({"name": "gpt", **GPT_OPTIONS, "pos_encoding": pos_encoding, "qk_norm": True}, 11).eval()
    ids = list(np.random.default_rng(0).integers(0, 11, size=20))
    maps = attention_maps(model, ids)  # (L, H, T, T)
    assert maps.shape == (2, 2, 20, 20)
    np.testing.assert_allclose(maps.sum(axis=-1), 1.0, atol=1e-5)
    assert np.all(np.triu(maps, k=1) == 0)  # nothing attends to the future
    config = {k: v for k, v in asdict(model.config).items() if k != "vocab_size"}
    engine = NumpyGPT(config, numpy_weights(model))
    engine.forward(np.array([ids]))
    np.testing.assert_allclose(maps, np.stack([block.attn.weights[0] for block in engine.blocks]), atol=1e-5)
    # keeping the weights changes nothing in what the model computes
    with torch.no_grad():
        plain = model(torch.tensor([ids]))
        model.blocks[0].attn.keep_weights = model.blocks[1].attn.keep_weights = True
        kept = model(torch.tensor([ids]))
    torch.testing.assert_close(plain, kept, atol=1e-5, rtol=1e-5)


def test_the_cnns_influence_is_exactly_its_receptive_field():
    torch.manual_seed(0)
    model = build_model({"name": "cnn", "n_layer": 2, "n_embd": 16, "block_size": 32}, 11).eval()
    T = 32
    assert model.receptive_field < T  # so the picture has positions outside it
    weights = influence(model, list(np.random.default_rng(0).integers(0, 11, size=T)))
    assert np.flatnonzero(weights).tolist() == list(range(T - model.receptive_field, T))
    assert all(p.grad is None for p in model.parameters())  # the parameters' gradients are left alone


def compose_pictures(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="attention", overrides=list(overrides))


def test_the_attention_command_writes_a_readable_picture_in_the_format_its_name_says(trained_run, tmp_path, capsys):
    out = tmp_path / "heads.png"
    draw(compose_pictures(f"ckpt={trained_run}", "prompt='To be, or not'", f"out={out}"))
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    long = tmp_path / "long.png"
    draw(compose_pictures(f"ckpt={trained_run}", f"prompt='{'to be or not ' * 5}'", f"out={long}"))
    assert "longer than block_size (16): showing its last block" in capsys.readouterr().err
    assert long.stat().st_size > 0
    # the format the suffix names, as a viewer expects from the name; one matplotlib cannot write is refused
    for name, starts in [("heads.svg", b"<?xml"), ("heads.pdf", b"%PDF"), ("heads.jpg", b"\xff\xd8\xff")]:
        draw(compose_pictures(f"ckpt={trained_run}", "prompt=To be", f"out={tmp_path / name}"))
        assert (tmp_path / name).read_bytes().startswith(starts)
    with pytest.raises(CharLMError, match=r"^out=.*heads\.doc: \.doc is not a picture format matplotlib writes; "
                       r"give one of .*\.pdf, .*\.png, .*\.svg"):
        draw(compose_pictures(f"ckpt={trained_run}", "prompt=To be", f"out={tmp_path / 'heads.doc'}"))
    assert not (tmp_path / "heads.doc").exists()
    with pytest.raises(CharLMError, match=f"^out={tmp_path} is a folder; give a file path$"):  # named as typed
        draw(compose_pictures(f"ckpt={trained_run}", "prompt=To be", f"out={tmp_path}"))


def charlm(*args: str) -> subprocess.CompletedProcess:
    return forked.run(["-m", "charlm", *args], ROOT)


def test_the_attention_command_through_the_command_line(trained_run, tmp_path):
    out = tmp_path / "a.png"
    result = charlm("attention", f"ckpt={trained_run}", "prompt=O Romeo, Romeo!", f"out={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(out) and matplotlib.image.imread(out).size
    refused = charlm("attention", f"ckpt={trained_run}", "prompt=Ω", f"out={out}")
    assert refused.returncode == 2 and refused.stderr == "error: characters not in the model's vocabulary: 'Ω'\n"


def test_a_cnn_given_to_the_attention_view_is_one_line(train_here, tmp_path):
    _, cnn_run = train_here(*TINY_CNN, "max_steps=4", "eval_interval=4", run_dir=tmp_path / "cnn")
    with pytest.raises(CharLMError, match=r"holds a cnn model, which has no attention; kind=influence draws"):
        draw(compose_pictures(f"ckpt={cnn_run}", "prompt=To be", f"out={tmp_path / 'x.png'}"))
    draw(compose_pictures(f"ckpt={cnn_run}", "prompt=To be", "kind=influence", f"out={tmp_path / 'x.png'}"))
    assert matplotlib.image.imread(tmp_path / "x.png").size
    with pytest.raises(CharLMError, match=r"checkpoint not found: .*missing"):
        draw(compose_pictures(f"ckpt={tmp_path / 'missing'}", f"out={tmp_path / 'y.png'}"))


def test_training_sends_the_pictures_to_tensorboard(train_here):
    _, run_dir = train_here(*TINY, "max_steps=10", "eval_interval=5")
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert [image.step for image in events.Images("inside/attention")] == [5, 10]
    _, quiet = train_here(*TINY, "max_steps=5", "eval_interval=5", "callbacks.inside_pictures.enabled=false",
                          run_dir=run_dir.parent / "quiet")
    events = EventAccumulator(str(quiet / "tb"))
    events.Reload()
    assert events.Tags()["images"] == []
