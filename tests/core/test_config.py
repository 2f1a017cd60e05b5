import pytest
import torch
from omegaconf import OmegaConf

from charlm.core.run_config import OptimizerConfig, group_settings
from charlm.models import build_model, count_parameters


def preset_model(compose_config, *overrides):
    cfg = compose_config(*overrides)
    with torch.device("meta"):  # shapes without memory or initialisation: the 85M model builds at once
        return cfg, build_model(OmegaConf.to_container(cfg.model, resolve=True), vocab_size=65)


@pytest.mark.parametrize(
    ("preset", "expected", "published"),
    [
        ("gpt_0.2m", 207_681, 209_729),  # the published shape with rotary positions
        ("gpt_0.2m_published", 209_729, 209_729),
        ("gpt_2.7m", 2_697_281, 2_697_281),  # the published shape, trained with Muon
        ("gpt_2.7m_published", 2_697_281, 2_697_281),
        ("gpt_10.7m", 10_646_784, 10_745_088),  # rotary positions: no position table
        ("gpt_10.7m_published", 10_745_088, 10_745_088),  # nanoGPT prints 10.65M: it leaves out position embeddings
        ("gpt_12l768", 85_102_080, None),
        ("cnn_0.2m", 206_785, 209_729),  # beside gpt_0.2m: 5 x 80
        ("cnn_2.7m", 2_694_977, 2_697_281),  # beside gpt_2.7m
        ("speedrun", 243_425, None),  # the CPU speed-run: at most 0.25M parameters
    ],
)
def test_preset_parameter_counts(compose_config, preset, expected, published):
    _, model = preset_model(compose_config, f"experiment={preset}")
    assert count_parameters(model) == expected
    if preset == "speedrun":
        assert expected <= 250_000  # the speed-run's size limit
    if published:
        assert abs(expected - published) / published < 0.02  # same size: within 2%


def test_nanogpt_count_without_position_embeddings(compose_config):
    _, model = preset_model(compose_config, "experiment=gpt_10.7m_published")
    assert count_parameters(model) - model.pos_emb.weight.numel() == 10_646_784  # nanoGPT: "10.65M"


def test_default_run_is_the_published_0_2m_preset(compose_config):
    default, preset = (OmegaConf.to_container(compose_config(*o)) for o in ([], ["experiment=gpt_0.2m_published"]))
    assert (default.pop("name"), preset.pop("name")) == ("${model.name}", "gpt_0.2m_published")
    assert default == preset


def test_top_level_knobs_reach_the_model_and_data(compose_config):
    cfg, model = preset_model(compose_config, "model=gpt", "n_layer=12", "n_embd=96", "block_size=48")
    assert len(model.blocks) == 12 and model.config.n_embd == 96 and model.block_size == 48
    assert cfg.data.block_size == 48


def test_knobs_override_a_preset(compose_config):
    cfg, model = preset_model(compose_config, "experiment=gpt_2.7m_published", "n_layer=2", "dropout=0.0")
    assert len(model.blocks) == 2 and model.config.n_embd == 192 and cfg.model.dropout == 0.0


def test_validation_interval_is_clipped_to_the_run(compose_config):
    cfg = compose_config("max_steps=40")
    assert cfg.trainer.val_check_interval == 40


def test_top_level_knobs_reach_the_cnn(compose_config):
    cfg, model = preset_model(compose_config, "model=cnn", "n_layer=8", "n_embd=128", "block_size=48")
    assert len(model.blocks) == 8
    assert model.config.n_embd == 128 and model.block_size == 48
    assert cfg.data.block_size == 48


def test_cnn_presets_keep_the_gpt_budget(compose_config):
    for size in ("0.2m", "2.7m"):
        gpt, cnn = compose_config(f"experiment=gpt_{size}"), compose_config(f"experiment=cnn_{size}")
        for key in ("block_size", "batch_size", "max_steps"):  # the token budget; lr and dropout are tuned per model
            assert gpt[key] == cnn[key], key
        _, model = preset_model(compose_config, f"experiment=cnn_{size}")
        assert model.receptive_field >= cnn.block_size


@pytest.mark.parametrize(("preset", "budget"), [("gpt_0.2m", 5000 * 16 * 32), ("gpt_2.7m", 5000 * 16 * 32),
                                              ("gpt_10.7m", 5000 * 64 * 256)])
def test_tuned_presets_keep_the_published_size_and_token_budget(compose_config, preset, budget):
    """Recipe changes are allowed; parameters within 2% and the same training tokens are not negotiable."""
    (tuned, tuned_model), (published, published_model) = (
        preset_model(compose_config, f"experiment={name}") for name in (preset, f"{preset}_published"))
    tokens = [c.max_steps * c.batch_size * c.block_size for c in (tuned, published)]
    assert tokens[0] == tokens[1] == budget
    sizes = [count_parameters(m) for m in (tuned_model, published_model)]
    assert abs(sizes[0] - sizes[1]) / sizes[1] <= 0.02


def test_the_warmup_stable_decay_schedule():
    from charlm.training.recipe import warmup_cosine, warmup_stable_decay

    steps = [warmup_stable_decay(s, 10, 110, 0.1, 0.2) for s in range(120)]
    assert steps[0] == pytest.approx(1 / 11) and steps[9] == pytest.approx(10 / 11)  # warm-up
    assert steps[10:90] == [1.0] * 80  # stable until the last 20% of the 100 steps after warm-up
    assert steps[100] == pytest.approx(1 - 0.9 * 10 / 20) and steps[110:] == [pytest.approx(0.1)] * 10
    assert all(a >= b for a, b in zip(steps[10:], steps[11:], strict=False))  # never rises again
    assert warmup_cosine(110, 10, 110, 0.1) == pytest.approx(0.1)  # both end at the same floor


def test_the_schedule_knob_reaches_the_optimizer(compose_config):
    from omegaconf import OmegaConf

    from charlm.models import build_model
    from charlm.training.recipe import make_optimizer

    cfg = compose_config("optimizer.schedule=wsd", "optimizer.warmup_steps=0", "max_steps=100")
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), vocab_size=65)
    optimizer, scheduler = make_optimizer(model, group_settings(OptimizerConfig, cfg.optimizer), cfg.max_steps)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[79] == pytest.approx(1e-3) and rates[99] < 2e-4  # stable, then decayed in the last 20 steps


@pytest.mark.parametrize(("shape", "expected"), [("n_layer=2 n_embd=90 n_head=5", 208_385),
                                               ("n_layer=2 n_embd=330 n_head=5", 2_664_705)])
def test_swiglu_is_parameter_matched(compose_config, shape, expected):
    """8/3 x n_embd wide, SwiGLU's three matrices hold exactly the weights of the plain MLP's two;
    only fc's bias grows (2 x 8/3 x n_embd instead of 4 x n_embd)."""
    _, plain = preset_model(compose_config, "experiment=gpt_0.2m", *shape.split())
    _, swiglu = preset_model(compose_config, "experiment=gpt_0.2m", *shape.split(), "model.activation=swiglu")
    assert count_parameters(swiglu) == expected
    matrices = [sum(p.numel() for p in m.parameters() if p.dim() == 2) for m in (plain, swiglu)]
    assert matrices[0] == matrices[1]
    assert abs(expected - count_parameters(plain)) / count_parameters(plain) < 0.02


# The recipe each _published preset was measured with, written out: a change to a shared default
# (optimizer/adamw.yaml, model/gpt.yaml, config.yaml) must not move their numbers.
PUBLISHED_OPTIMIZER = {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0.1, "warmup_steps": 100,
                       "min_lr_ratio": 0.1, "decay_steps": None, "schedule": "cosine", "decay_fraction": 0.2}
PUBLISHED_BLOCK = {"name": "gpt", "init": "gpt2", "norm": "pre", "norm_type": "layernorm", "pos_encoding": "learned",
                   "qk_norm": False, "qkv_bias": False, "logit_softcap": 0.0, "zero_init_proj": False}
SMALL_BLOCK = {"activation": "relu", "bias": True, "tie_weights": False}
NANOGPT_BLOCK = {"activation": "gelu", "bias": False, "tie_weights": True}
PUBLISHED = {  # n_layer, n_head, n_embd, block_size, dropout, batch_size, max_steps; the options that differ
    "gpt_0.2m_published": ((4, 4, 64, 32, 0.0, 16, 5000), SMALL_BLOCK),
    "gpt_2.7m_published": ((6, 6, 192, 32, 0.1, 16, 5000), SMALL_BLOCK),
    "gpt_10.7m_published": ((6, 6, 384, 256, 0.2, 64, 5000), NANOGPT_BLOCK),
}


@pytest.mark.parametrize("preset", list(PUBLISHED))
def test_published_presets_keep_their_first_recipe(compose_config, preset):
    """New recipes go into the tuned presets; the _published ones train with AdamW, cosine decay and
    the model options of the day they were measured, so their numbers stay reproducible."""
    cfg = compose_config(f"experiment={preset}")
    shape, options = PUBLISHED[preset]
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.dropout, cfg.batch_size, cfg.max_steps) == shape
    assert group_settings(OptimizerConfig, cfg.optimizer).applied() == PUBLISHED_OPTIMIZER
    model = OmegaConf.to_container(cfg.model, resolve=True)
    assert {key: model[key] for key in [*PUBLISHED_BLOCK, *options]} == PUBLISHED_BLOCK | options
    assert cfg.trainer.gradient_clip_val == 1.0
