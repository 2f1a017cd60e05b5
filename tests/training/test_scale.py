"""Precision, compile and data parallelism, through the real command line on CPU."""

import json
import logging
import math

import forked
import pytest
import torch
from conftest import ROOT, TINY, TINY_CNN, free_port, run_script, train_in_process

from charlm.core.errors import log
from charlm.inference.checkpoint import model_state

STEPS = ["max_steps=30", "eval_interval=15"]
RUN = [*TINY, *STEPS]
# Two CPU processes, each with half of a global batch of 16, under each way of starting them.
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true", "batch_size=8",
       "threads=1"]


def read_run(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    weights = model_state(checkpoint["state_dict"])
    return summary, weights


def train(tmp_path, name, *args):
    """A real command-line run: for what only a process shows (DDP launches, environment variables)."""
    run_dir = tmp_path / name
    result = run_script("train.py", *RUN, f"hydra.run.dir={run_dir}", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, *read_run(run_dir)


def train_here(tmp_path, name, *args):
    """The same run in this process."""
    train_in_process(tmp_path / name, *RUN, *args)
    return read_run(tmp_path / name)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference for data parallelism: one CPU process (the DDP runs are gloo on CPU, also on a
    machine with a GPU) with the whole global batch of 16."""
    return train_here(tmp_path_factory.mktemp("single"), "single", "trainer=cpu", "batch_size=16", "threads=1")


def assert_trains_like_one_process(run, one_process):
    """Each of 2 gloo processes takes half of every global batch of 16; DDP averages their gradients,
    which is the full batch's gradient up to float32 summation order. So after 30 steps the weights
    agree to ~1e-6 (we allow 1e-5) and the validation loss to 1e-5."""
    (summary, weights), (single, single_weights) = run, one_process
    assert summary["steps"] == single["steps"] == 30
    assert summary["tokens"] == single["tokens"] == 30 * 16 * 16
    assert summary["best_val_loss"] == pytest.approx(single["best_val_loss"], abs=1e-5)
    assert weights.keys() == single_weights.keys()
    for key in single_weights:
        torch.testing.assert_close(weights[key], single_weights[key], atol=1e-5, rtol=0)


def test_ddp_spawn_with_muon_matches_one_process(tmp_path, capsys):
    """ddp_spawn (the run starts its own two workers), started from this process as a sweep job would be,
    with optimizer=muon, whose Newton-Schulz runs in float32 here, as on every CPU without native
    bfloat16: as tight as AdamW under torchrun and SLURM below. (In bfloat16, a float32 summation-order
    difference can flip a rounding, and the weights agree to about 1e-3.)"""
    muon = ["optimizer=muon", "optimizer.muon_dtype=float32"]
    launcher_log = logging.NullHandler()  # as Hydra's job logging gives the launching process one, with its format
    launcher_log.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    log.addHandler(launcher_log)
    try:
        ddp = train_here(tmp_path, "ddp", *DDP, *muon)
    finally:
        log.removeHandler(launcher_log)
    assert "best checkpoint" in capsys.readouterr().out  # the spawning process reports the run
    # rank zero, a process of its own, still writes a line per validation to the run's train.log
    validations = [line for line in (tmp_path / "ddp" / "train.log").read_text().splitlines() if "val/loss" in line]
    assert [line.split(":")[0] for line in validations] == ["[INFO] step 15/30", "[INFO] step 30/30"]
    assert_trains_like_one_process(ddp, train_here(tmp_path, "single", "trainer=cpu", "batch_size=16", "threads=1",
                                                   *muon))


@pytest.mark.slow
def test_torchrun_launches_ddp_that_matches_one_process(tmp_path, one_process):
    """torchrun starts both processes itself (as on every machine of a multi-node job); each runs
    train.py with trainer.strategy=ddp into one fixed run folder, as the README says."""
    run_dir = tmp_path / "torchrun"
    result = forked.run(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                         f"--master_port={free_port()}", ROOT / "train.py", *RUN, *DDP, "trainer.strategy=ddp",
                         f"hydra.run.dir={run_dir}"], ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_trains_like_one_process(read_run(run_dir), one_process)


@pytest.mark.slow
def test_slurm_tasks_run_ddp_that_matches_one_process(tmp_path, one_process):
    """Two processes started with the variables `srun --ntasks-per-node=2` sets (no SLURM here):
    Lightning's SLURM environment gives each its rank, as on a cluster."""
    run_dir = tmp_path / "slurm"
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "charlm", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2",
             "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_NODELIST": "127.0.0.1",
             "MASTER_PORT": str(free_port())}
    tasks = [forked.start([ROOT / "train.py", *RUN, *DDP, "trainer.strategy=ddp", f"hydra.run.dir={run_dir}"], ROOT,
                          {**slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}, fresh=True)
             for rank in range(2)]  # fresh interpreters, as srun starts them (forked ranks once hung here)
    outputs = [task.communicate(timeout=300) for task in tasks]
    for rank, (task, (_, stderr)) in enumerate(zip(tasks, outputs, strict=True)):
        assert task.returncode == 0, stderr[-3000:]
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in stderr  # the rank SLURM gave, not a self-launch
    assert_trains_like_one_process(read_run(run_dir), one_process)


@pytest.mark.parametrize(("model", "optimizer"), [("gpt", "adamw"), ("cnn", "adamw"), ("gpt", "muon"), ("cnn", "muon")])
def test_bf16_mixed_precision_trains_both_models(tmp_path, model, optimizer, recwarn):
    fast = [f"optimizer={optimizer}", "optimizer.warmup_steps=3", "lr=3e-3"]
    run = [*(TINY_CNN if model == "cnn" else TINY), *STEPS, *fast]  # TINY_CNN: without n_head, which the CNN refuses
    train_in_process(tmp_path / "fp32", *run)
    train_in_process(tmp_path / "bf16", *run, "trainer.precision=bf16-mixed")
    (fp32, _), (bf16, weights) = read_run(tmp_path / "fp32"), read_run(tmp_path / "bf16")
    assert bf16["steps"] == 30
    assert bf16["best_val_loss"] < math.log(65) - 0.5  # it learns
    assert bf16["best_val_loss"] == pytest.approx(fp32["best_val_loss"], abs=0.05)  # about as well as fp32
    assert all(w.dtype == torch.float32 for w in weights.values())  # mixed: weights stay float32
    assert not [w for w in recwarn if "model summary" in str(w.message)]  # so its float32 size is right


@pytest.mark.slow
def test_compile_trains_the_same_as_eager(tmp_path, capsys):
    from torch._dynamo.utils import counters

    eager, eager_weights = train_here(tmp_path, "eager")
    counters.clear()
    compiled, compiled_weights = train_here(tmp_path, "compiled", "compile=true")
    assert "compiled the model with torch.compile" in capsys.readouterr().out
    # two graphs, training's and validation's (no gradients): batches keep the strides it was compiled
    # for, and the validation pictures run eagerly
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
    assert compiled_weights.keys() == eager_weights.keys()  # no _orig_mod. prefix in checkpoints
    assert compiled["best_val_loss"] == pytest.approx(eager["best_val_loss"], abs=1e-4)


def test_compile_falls_back_to_eager_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "/bin/false")  # a machine without a working C++ compiler, which CPU code needs
    result, summary, _ = train(tmp_path, "fallback", "trainer=cpu", "compile=true")
    assert "warning: compile=true failed, training without torch.compile" in result.stderr
    assert summary["steps"] == 30


@pytest.mark.parametrize(("precision", "fused", "name"), [("bf16-mixed", True, "adamw"), ("16-mixed", True, "adamw"),
                                                          ("32-true", True, "adamw"), ("16-mixed", False, "adamw"),
                                                          ("16-mixed", True, "muon")])
def test_gradient_clipping_works_with_the_fused_adamw_used_on_gpus(precision, fused, name):
    """Lightning refuses to clip gradients of a fused optimizer under mixed precision; LanguageModel
    clips them itself (unscaling first under 16-mixed, unless Lightning already did). Fused AdamW also
    runs on CPU, so this is the GPU configuration, checked here: every step's gradients reach the
    optimizer clipped to the limit. With Muon the fused AdamW sits inside MuonWithAdamW, which Lightning
    unscales as a plain optimizer before clipping; the GradScaler then steps both."""
    import lightning as L
    from lightning.pytorch.plugins.precision import MixedPrecision

    from charlm.core.run_config import DataConfig
    from charlm.training.data import CharDataModule
    from charlm.training.lightning_module import LanguageModel
    from charlm.training.recipe import make_optimizer

    clip, norms = 1e-3, []

    class FusedAdamW(LanguageModel):
        def configure_optimizers(self):
            optimizer, scheduler = make_optimizer(self.model, self.optim, self.trainer.max_steps, fused=fused)
            params = [p for group in optimizer.param_groups for p in group["params"]]

            def record_norm(*_):  # after step(): the closure (backward, clipping) runs inside it
                grads = [p.grad.norm() for p in params if p.grad is not None]
                norms.append(torch.linalg.vector_norm(torch.stack(grads)))

            optimizer.register_step_post_hook(record_norm)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    data = CharDataModule(DataConfig(block_size=16, batch_size=8, num_batches=6))
    data.setup("fit")
    module = FusedAdamW({"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}, data.vocab.chars,
                        {"name": name, "warmup_steps": 1, "min_lr_ratio": 1})
    before = [p.detach().clone() for p in module.parameters()]
    # Lightning maps precision="16-mixed" to bf16 on CPU; the plugin keeps float16 and its GradScaler.
    precision = {"precision": precision} if precision != "16-mixed" else {
        "plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}
    trainer = L.Trainer(accelerator="cpu", **precision, max_steps=6, gradient_clip_val=clip, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 6 and len(norms) == 6
    assert all(norm <= clip * 1.001 for norm in norms if torch.isfinite(norm))
    assert sum(torch.isfinite(norm) for norm in norms) >= 4  # 16-mixed may skip a step or two while its scale settles
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))  # it trained
