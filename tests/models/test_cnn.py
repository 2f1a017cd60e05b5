import pytest
import torch

from charlm.core.errors import CharLMError
from charlm.inference.checkpoint import load_model
from charlm.models import build_model


def tiny_cnn(**overrides):
    config = dict(name="cnn", n_layer=4, n_embd=16, block_size=40, dilation_cycle=3)
    return build_model(config | overrides, vocab_size=11).eval()


@pytest.mark.parametrize("kernel_size", [2, 3, 5])
def test_future_tokens_never_change_past_logits(kernel_size):
    torch.manual_seed(0)
    model = tiny_cnn(kernel_size=kernel_size)
    idx = torch.randint(11, (3, 40))
    changed = idx.clone()
    changed[:, 25:] = torch.randint(11, (3, 15))
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :25], b[:, :25], atol=1e-6)
    assert not torch.allclose(a[:, 25:], b[:, 25:])


def test_receptive_field_is_exactly_what_the_stack_sees():
    torch.manual_seed(0)
    model = tiny_cnn(kernel_size=3, dilation_cycle=2)  # dilations 1, 2, 1, 2
    assert model.config.dilations == [1, 2, 1, 2]
    assert model.receptive_field == 1 + 2 * (1 + 2 + 1 + 2) == 13
    idx = torch.randint(11, (1, 40))
    with torch.no_grad():
        base = model(idx)[0, 39]
        inside, outside = idx.clone(), idx.clone()
        inside[0, 39 - 12] = (idx[0, 39 - 12] + 1) % 11  # oldest character in the field
        outside[0, 39 - 13] = (idx[0, 39 - 13] + 1) % 11  # one further back
        assert not torch.allclose(model(inside)[0, 39], base)
        assert torch.allclose(model(outside)[0, 39], base)


def test_dilation_schedule_doubles_or_cycles():
    assert tiny_cnn(n_layer=5, dilation_cycle=0).config.dilations == [1, 2, 4, 8, 16]
    assert tiny_cnn(n_layer=7, dilation_cycle=3).config.dilations == [1, 2, 4, 1, 2, 4, 1]


def test_shorter_sequences_work_and_longer_ones_are_rejected():
    model = tiny_cnn()
    assert model(torch.zeros(2, 7, dtype=torch.long)).shape == (2, 7, 11)
    with pytest.raises(ValueError, match="longer than block_size 40"):
        model(torch.zeros(1, 41, dtype=torch.long))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kernel_size": 1}, "kernel_size must be an integer >= 2"),
        ({"n_layer": 0}, "n_layer must be a positive integer"),
        ({"n_embd": -16}, "n_embd must be a positive integer"),
        ({"dilation_cycle": -1}, "dilation_cycle must be an integer >= 0"),
        ({"dropout": 1.0}, r"dropout must be a finite number in \[0, 1\)"),
    ],
)
def test_bad_cnn_options_get_clear_errors(options, message):
    with pytest.raises(CharLMError, match=message):
        tiny_cnn(**options)




def test_checkpoints_saved_with_the_old_cnn_knob_names_still_load(tmp_path):
    """Before the CNN took the GPT's names it saved num_layers, embedding_dim, hidden_dim, max_seq_len."""
    torch.manual_seed(0)
    model = tiny_cnn()
    old = {"name": "cnn", "num_layers": 4, "embedding_dim": 16, "hidden_dim": 16, "max_seq_len": 40,
           "kernel_size": 3, "dilation_cycle": 3, "dropout": 0.0}
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"model": old, "vocab": "abcdefghijk"}}, tmp_path / "old.ckpt")
    loaded = load_model(tmp_path / "old.ckpt")
    assert loaded.model_config == {"name": "cnn", "block_size": 40, "n_layer": 4, "n_embd": 16, "kernel_size": 3,
                                   "dilation_cycle": 3, "dropout": 0.0}  # today's names
    idx = torch.randint(11, (2, 40))
    with torch.no_grad():
        assert torch.equal(loaded.model(idx), model(idx))
    with pytest.raises(CharLMError, match=r"hidden_dim \(8\) must equal n_embd \(16\)"):
        build_model(old | {"hidden_dim": 8}, vocab_size=11)
