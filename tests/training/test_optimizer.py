"""optimizer=muon: which parameters Muon takes, and that the combined optimizer keeps exact resume,
checkpoints of both states and the learning-rate schedule."""

import json

import lightning as L
import pytest
import torch
from conftest import TINY, train_in_process
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from charlm.core.errors import CharLMError
from charlm.core.run_config import OptimizerConfig, prepare_run_config
from charlm.inference.checkpoint import model_state
from charlm.models import build_model
from charlm.training.muon import Muon, adjusted_lr, native_bfloat16, newton_schulz_dtype
from charlm.training.recipe import MuonWithAdamW, make_optimizer

MUON = OptimizerConfig(name="muon", warmup_steps=2)
STEADY = [*TINY, "optimizer=muon", "max_steps=40", "dropout=0.1", "eval_interval=10"]


@pytest.mark.parametrize("name", ["gpt", "cnn"])
def test_muon_takes_the_blocks_matrices_and_adamw_everything_else(name):
    sizes = {"gpt": {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16},
             "cnn": {"n_layer": 2, "n_embd": 16, "block_size": 16}}
    model = build_model({"name": name, **sizes[name]}, vocab_size=11)
    optimizer, _ = make_optimizer(model, MUON, max_steps=10)
    assert isinstance(optimizer, MuonWithAdamW)
    muon, adamw = optimizer.optimizers["muon"], optimizer.optimizers["adamw"]
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    expected = {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    assert in_muon == expected and expected  # the CNN's kernels too: stored as (out, in * k) matrices
    assert in_adamw == set(names.values()) - expected
    assert {"tok_emb.weight", "head.weight"} <= in_adamw
    # One param_groups list for clipping and the scheduler: the two optimizers' own groups.
    assert optimizer.param_groups == muon.param_groups + adamw.param_groups


def test_the_schedule_scales_both_learning_rates():
    model = build_model({"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 8}, vocab_size=11)
    optimizer, scheduler = make_optimizer(model, MUON, max_steps=10)
    loss = model(torch.randint(0, 11, (2, 8))).square().mean()
    loss.backward()
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    multiplier = scheduler.lr_lambdas[0](3)
    assert optimizer.optimizers["muon"].param_groups[0]["lr"] == pytest.approx(0.01 * multiplier)
    assert optimizer.optimizers["adamw"].param_groups[0]["lr"] == pytest.approx(1e-3 * multiplier)
    # and its state round-trips: both optimizers' moments and momenta
    state = optimizer.state_dict()
    fresh, _ = make_optimizer(model, MUON, max_steps=10)
    fresh.load_state_dict(state)
    assert len(fresh.state) == len(optimizer.state) == len(list(model.parameters()))
    assert fresh.param_groups[0] is fresh.optimizers["muon"].param_groups[0]  # the scheduler reaches the loaded groups
    with pytest.raises(ValueError, match="muon"):
        fresh.load_state_dict(state["adamw"])


def test_lightning_moves_both_optimizers_state():
    """`state` is a merged read-only view; Lightning moves state between devices by writing into each
    parameter's own state dict, which belongs to the optimizer that owns the parameter."""
    from lightning.fabric.utilities.optimizer import _optimizer_to_device

    model = build_model({"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 8}, vocab_size=11)
    optimizer, _ = make_optimizer(model, MUON, max_steps=10)
    model(torch.randint(0, 11, (2, 8))).square().mean().backward()
    optimizer.step()
    _optimizer_to_device(optimizer, "meta")  # a device that every build of torch has
    for child in optimizer.optimizers.values():
        moments = [t for s in child.state.values() for k, t in s.items() if k != "step"]
        assert moments and all(t.is_meta for t in moments)


# Tall, wide and square matrices; two shapes that orthogonalise as one (64 x 16 and 16 x 64); one alone.
SHAPES = [(48, 16), (16, 16), (64, 16), (16, 64), (48, 16), (16, 64), (24, 40)]


def same_steps(optimizers: list[torch.optim.Optimizer], params: list[list[torch.Tensor]], steps: int = 6) -> None:
    """Step each optimizer on its own copy of the parameters with the same random gradients."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=generator) for p in params[0]]
        for copy in params:
            for p, g in zip(copy, grads, strict=True):
                p.grad = g.clone()
        for optimizer in optimizers:
            optimizer.step()


def matrices(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(0.1 * torch.randn(shape, generator=generator)) for shape in SHAPES]


@pytest.mark.parametrize("settings", [{}, {"nesterov": False, "weight_decay": 0.1, "adjust_lr_fn": "match_rms_adamw"}])
def test_batched_muon_matches_torchs_muon_in_bfloat16(settings):
    """In bfloat16, torch's own dtype: the momenta are identical and the weights agree to bfloat16's
    precision after several steps, for tall, wide and square matrices, with either lr adjustment."""
    start, theirs, ours = matrices(), matrices(), matrices()
    reference = torch.optim.Muon(theirs, lr=0.02, **settings)
    batched = Muon(ours, lr=0.02, ns_dtype="bfloat16", **settings)
    same_steps([reference, batched], [theirs, ours])
    for a, b, p0 in zip(theirs, ours, start, strict=True):
        assert torch.equal(reference.state[a]["momentum_buffer"], batched.state[b]["momentum_buffer"])
        assert (a - b).norm() < 0.01 * (a - p0).norm()  # bfloat16 keeps 8 bits: 0.4% per rounding
    # The checkpoint format is torch's: each loads the other's state.
    assert batched.state_dict()["param_groups"][0].keys() == reference.state_dict()["param_groups"][0].keys()
    reference.load_state_dict(batched.state_dict())
    batched.load_state_dict(reference.state_dict())


def reference_muon_step(p: torch.Tensor, grad: torch.Tensor, buffer: torch.Tensor, lr: float, momentum: float,
                        decay: float) -> None:
    """torch.optim.Muon's documented update for one matrix, in float64, unbatched: the check on the
    float32 path, which torch's class (always bfloat16) cannot give."""
    a, b, c = torch.optim._muon.DEFAULT_A, torch.optim._muon.DEFAULT_B, torch.optim._muon.DEFAULT_C
    buffer.mul_(momentum).add_(grad, alpha=1 - momentum)
    x = (grad + momentum * (buffer - grad)).double()  # Nesterov
    x = x.T if x.shape[0] > x.shape[1] else x
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(5):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    x = x.T if grad.shape[0] > grad.shape[1] else x
    p.mul_(1 - lr * decay).sub_(x.float(), alpha=adjusted_lr(lr, None, p.shape))


def test_batched_muon_in_float32_is_torchs_update_to_float_precision():
    start, ours, theirs = matrices(), matrices(), matrices()
    batched = Muon(ours, lr=0.02, weight_decay=0.1, ns_dtype="float32")
    buffers = [torch.zeros_like(p) for p in theirs]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(6):
            grads = [torch.randn(p.shape, generator=generator) for p in ours]
            for p, g in zip(ours, grads, strict=True):
                p.grad = g
            batched.step()
            for p, g, buffer in zip(theirs, grads, buffers, strict=True):
                reference_muon_step(p, g, buffer, lr=0.02, momentum=0.95, decay=0.1)
    for a, b, p0 in zip(ours, theirs, start, strict=True):
        assert (a - b).norm() < 1e-5 * (b - p0).norm()


def test_auto_picks_bfloat16_only_where_the_device_has_it(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": False})
    assert not native_bfloat16("cpu") and newton_schulz_dtype("auto", "cpu") == torch.float32
    for feature in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"):  # x86 and ARM names
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda feature=feature: {feature: True})
        assert newton_schulz_dtype("auto", "cpu") == torch.bfloat16
    assert newton_schulz_dtype("float32", "cpu") == torch.float32  # a setting other than auto is kept
    monkeypatch.delattr(torch.cpu, "get_capabilities")  # a torch too old to tell: float32, always correct
    assert newton_schulz_dtype("auto", "cpu") == torch.float32
    assert newton_schulz_dtype("auto", "meta") == torch.float32


class StopAt(L.Callback):
    """Stop a run after `step` steps as an interrupt would: mid-epoch, so a resume continues it."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def test_a_resumed_muon_run_continues_exactly(tmp_path):
    """40 steps in one go against 20 steps, stopped, then resumed to 40: the same weights, bit for bit."""
    train_in_process(tmp_path / "whole", *STEADY)
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())  # auto resolved once, recorded
    assert summary["muon_dtype"] == str(newton_schulz_dtype("auto", "cpu")).removeprefix("torch.")
    events = EventAccumulator(str(tmp_path / "whole" / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    muon_lr, adamw_lr = ({e.step: e.value for e in events.Scalars(f"lr/{name}")} for name in ("muon", "adamw"))
    assert len(muon_lr) == 4 and muon_lr == pytest.approx({step: 10 * lr for step, lr in adamw_lr.items()})
    train_in_process(tmp_path / "part", *STEADY, "+callbacks.stop._target_=test_optimizer.StopAt",
                     "+callbacks.stop.step=20")
    checkpoint = torch.load(tmp_path / "part" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 20
    saved = checkpoint["optimizer_states"][0]
    assert set(saved) == {"muon", "adamw"}
    assert all("momentum_buffer" in s for s in saved["muon"]["state"].values())
    assert all("exp_avg_sq" in s for s in saved["adamw"]["state"].values())
    # A resumed run continues in its own run folder.
    train_in_process(tmp_path / "resume-log", *STEADY, f"ckpt_path={tmp_path / 'part'}")
    whole, resumed = [model_state(torch.load(tmp_path / run / "checkpoints" / "last.ckpt",
                                             weights_only=True)["state_dict"]) for run in ("whole", "part")]
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


def test_resuming_with_another_optimizer_is_one_clear_error(tmp_path):
    train_in_process(tmp_path / "muon", *STEADY)
    with pytest.raises(CharLMError, match="trained with optimizer=muon, this run uses optimizer=adamw"):
        train_in_process(tmp_path / "adamw", *TINY, "max_steps=20", f"ckpt_path={tmp_path / 'muon'}")


def test_muon_settings_are_checked_and_apply_to_muon_only(compose_config):
    def prepare(*overrides):
        return prepare_run_config(compose_config(*overrides), overrides)

    with pytest.raises(CharLMError, match=r"^optimizer.muon_lr must be a finite number > 0, got 0"):
        prepare("optimizer=muon", "optimizer.muon_lr=0")
    with pytest.raises(CharLMError, match=r"^optimizer.muon_momentum must be a finite number in \[0, 1\), got 1"):
        prepare("optimizer=muon", "optimizer.muon_momentum=1")
    with pytest.raises(CharLMError, match=r"^optimizer.muon_lr applies to optimizer=muon only; this run uses "
                                          r"optimizer=adamw: add optimizer=muon, or drop it"):
        prepare("optimizer.muon_lr=0.02")
    # A preset's Muon settings under optimizer=adamw are left out: the run's settings (and HParams) hold
    # only what applies.
    applied = prepare("experiment=gpt_10.7m", "optimizer=adamw").optimizer.applied()
    assert applied["name"] == "adamw" and not any(key.startswith("muon_") for key in applied)
    assert prepare("experiment=gpt_10.7m").optimizer.applied()["muon_lr"] == 0.02


def test_old_cnn_checkpoints_with_3d_kernels_still_load():
    options = {"name": "cnn", "n_layer": 2, "n_embd": 8, "block_size": 8}
    model = build_model(options, vocab_size=5)
    state = {k: v.view(v.shape[0], 8, -1) if k.endswith("conv.weight") else v for k, v in model.state_dict().items()}
    assert state["blocks.0.conv.weight"].dim() == 3
    fresh = build_model(options, vocab_size=5)
    fresh.load_state_dict(state)
    ids = torch.randint(0, 5, (2, 8))
    torch.testing.assert_close(fresh(ids), model(ids), rtol=0, atol=0)
