import pytest
import torch

from charlm.core.errors import CharLMError
from charlm.models import build_model, count_parameters


def tiny_gpt(**overrides):
    config = dict(name="gpt", n_layer=2, n_head=2, n_embd=16, block_size=24) | overrides
    return build_model(config, vocab_size=11).eval()


@pytest.mark.parametrize("options", [{}, {"activation": "gelu", "tie_weights": True, "bias": False},
                                     {"norm": "post"}, {"pos_encoding": "sinusoidal"}, {"pos_encoding": "rope"},
                                     {"norm_type": "rmsnorm", "qk_norm": True, "activation": "relu2",
                                      "logit_softcap": 15.0, "pos_encoding": "rope"}, {"activation": "swiglu"}])
def test_future_tokens_never_change_past_logits(options):
    torch.manual_seed(0)
    model = tiny_gpt(**options)
    idx = torch.randint(11, (3, 24))
    changed = idx.clone()
    changed[:, 15:] = torch.randint(11, (3, 9))
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :15], b[:, :15], atol=1e-6)
    assert not torch.allclose(a[:, 15:], b[:, 15:])


def test_shorter_sequences_work_and_longer_ones_are_rejected():
    model = tiny_gpt()
    assert model(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5, 11)
    with pytest.raises(ValueError, match="longer than block_size"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_weight_tying_shares_one_matrix():
    model = tiny_gpt(tie_weights=True)
    assert model.head.weight is model.tok_emb.weight
    assert count_parameters(model) == count_parameters(tiny_gpt(tie_weights=False)) - 16 * 11 - 11


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_embd": 18, "n_head": 4}, "divisible by n_head"),
        ({"n_layer": 0}, "n_layer must be a positive integer"),
        ({"n_embd": -8}, "n_embd must be a positive integer"),
        ({"dropout": 1.0}, r"dropout must be a finite number in \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout must be a finite number in \[0, 1\)"),
        ({"activation": "tanh"}, "activation must be one of"),
        ({"pos_encoding": "rope", "n_embd": 18, "n_head": 2}, "rope needs an even head size"),
        ({"n_layer": "four"}, "n_layer must be a positive integer, got .four."),
        ({"n_layers": 3}, "unexpected keyword argument 'n_layers'"),
        ({"logit_softcap": -1.0}, "logit_softcap must be a finite number >= 0"),
        ({"norm_type": "batchnorm"}, "norm_type must be one of"),
    ],
)
def test_bad_model_options_get_clear_errors(options, message):
    with pytest.raises(CharLMError, match=message):
        tiny_gpt(**options)


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_cached_chunk_after_a_cache_sees_the_right_past(pos_encoding):
    """Several new tokens after a cache (an offset causal mask) equal one full forward pass."""
    torch.manual_seed(0)
    model = tiny_gpt(pos_encoding=pos_encoding)
    idx = torch.randint(11, (2, 20))
    with torch.no_grad():
        reference = model(idx)
        first, cache = model.forward_cached(idx[:, :8], None)
        second, cache = model.forward_cached(idx[:, 8:], cache)
    assert cache.length == 20
    assert torch.allclose(torch.cat([first, second], dim=1), reference, atol=1e-5)


def test_zero_initialised_projections_make_every_block_start_as_the_identity():
    torch.manual_seed(0)
    model = tiny_gpt(zero_init_proj=True)
    projections = [p for name, p in model.named_parameters() if name.endswith("proj.weight")]
    assert len(projections) == 2 * 2 and all(torch.count_nonzero(p) == 0 for p in projections)
    idx = torch.randint(11, (2, 24))
    with torch.no_grad():
        x = model.tok_emb(idx) + model.pos_emb.weight[:24]
        expected = model.head(model.ln_f(x))  # no block changes the residual stream yet
        torch.testing.assert_close(model(idx), expected)


def test_soft_capped_logits_stay_inside_the_cap():
    torch.manual_seed(0)
    model = tiny_gpt(logit_softcap=2.0)
    idx = torch.randint(11, (2, 24))
    with torch.no_grad():
        model.head.weight.mul_(1000)  # logits far beyond the cap without it
        logits = model(idx)
        model.config.logit_softcap = 0.0
        uncapped = model(idx)
    assert uncapped.abs().max() > 100 and logits.abs().max() <= 2.0
    torch.testing.assert_close(logits, 2.0 * torch.tanh(uncapped / 2.0))
