"""One owner per knob, one source of model defaults, and every run ending validated and checkpointed."""

import dataclasses
import json

import pytest
import torch
from conftest import TINY, TINY_CNN, TINY_RUN, run_script, sample_in_process
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from charlm.core.errors import CharLMError
from charlm.core.model_config import MODEL_CONFIGS, full_config
from charlm.core.run_config import (
    COPIES,
    RUN_FOLDER_COPIES,
    DataConfig,
    OptimizerConfig,
    RunKnobs,
    prepare_run_config,
    resolve_copies,
)

VALUES = {"max_time": "00:00:01:00", "dropout": 0.25, "lr": 0.0025}  # owners that take other than a size


@pytest.mark.parametrize("copy", sorted(COPIES))
def test_a_copy_set_alone_takes_effect_everywhere(compose_config, copy):
    owner = COPIES[copy][0]
    value = VALUES.get(owner, 48)
    overrides = [f"{copy}={value}"]
    cfg = compose_config(*overrides)
    resolve_copies(cfg, overrides)
    assert cfg[owner] == value
    for other, (other_owner, _) in COPIES.items():
        if other_owner == owner and OmegaConf.select(cfg, other) is not None:
            expected = min(value, cfg.max_steps) if other == "trainer.val_check_interval" else value
            assert OmegaConf.select(cfg, other) == expected, other
            parent, _, leaf = other.rpartition(".")
            assert OmegaConf.is_interpolation(OmegaConf.select(cfg, parent), leaf)  # linked again


def test_a_copy_that_disagrees_with_its_owner_on_the_command_line_is_refused(compose_config):
    overrides = ["max_steps=100", "trainer.max_steps=60"]
    cfg = compose_config(*overrides)
    with pytest.raises(CharLMError, match=r"^trainer.max_steps=60 and max_steps=100 disagree; max_steps sets both"):
        resolve_copies(cfg, overrides)


def test_a_copy_that_agrees_with_its_owner_is_fine(compose_config):
    overrides = ["batch_size=8", "data.batch_size=8"]
    cfg = compose_config(*overrides)
    resolve_copies(cfg, overrides)
    assert cfg.batch_size == cfg.data.batch_size == 8


@pytest.mark.parametrize("copy", RUN_FOLDER_COPIES)
def test_copies_of_the_run_folder_point_to_hydra_run_dir(compose_config, copy):
    cfg = compose_config("logger=[tensorboard,csv,mlflow,wandb]", f"{copy}=/tmp/elsewhere")
    with pytest.raises(CharLMError, match=rf"^{copy} is the run folder, which hydra.run.dir sets"):
        resolve_copies(cfg)


@pytest.mark.parametrize("family", sorted(MODEL_CONFIGS))
def test_model_yaml_and_dataclass_defaults_are_the_same(compose_config, family):
    """conf/model/<family>.yaml lists exactly the dataclass's fields, each with the dataclass's default
    (sizes through the top-level knobs, whose defaults equal the dataclass's too)."""
    model = OmegaConf.to_container(compose_config(f"model={family}").model, resolve=True)
    defaults = {f.name: f.default for f in dataclasses.fields(MODEL_CONFIGS[family]) if f.name != "vocab_size"}
    assert model == {"name": family, **defaults}
    assert full_config({"name": family}) == model  # and so does a config that names only its family


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_the_defaults_help_shows_are_the_ones_a_run_gets(compose_config, optimizer):
    """Every knob `--help` lists (top level, optimizer, data) has its schema's default in the composed
    config, as written (`name` stays the model's name, not a placeholder)."""
    cfg = compose_config(f"optimizer={optimizer}")
    for prefix, schema in (("", RunKnobs), ("optimizer.", OptimizerConfig), ("data.", DataConfig)):
        for spec in dataclasses.fields(schema):
            key = prefix + spec.name
            if key in COPIES or key == "optimizer.name":
                continue
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            composed = OmegaConf.to_container(node, resolve=False)[leaf]
            default = spec.default_factory() if callable(spec.default_factory) else spec.default
            assert composed == default, key
    assert cfg.name == "gpt"


def lightning_step_of_last_checkpoint(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


def validated_steps(run_dir) -> list[int]:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [e.step + 1 for e in events.Scalars("val/loss")]  # logged at the step index


@pytest.mark.parametrize("limit", [["trainer.max_steps=24"], ["max_steps=24", "eval_interval=1000"]],
                         ids=["lightning spelling", "shorter than one interval"])
def test_a_run_ending_between_validations_still_validates_and_checkpoints(train_here, limit):
    best, run_dir = train_here(*TINY, "eval_interval=10", *limit)
    assert lightning_step_of_last_checkpoint(run_dir) == 24
    assert validated_steps(run_dir)[-1] == 24  # the last step is validated...
    [best_file] = (run_dir / "checkpoints").glob("best-step*.ckpt")  # ...so the best is among them
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 24 and summary["status"] == "finished" and summary["best_val_loss"] == best
    # the LightningModule records the best validation in every checkpoint; the summary reads it there
    recorded = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["best_val"]
    assert recorded == {"loss": best, "step": summary["best_step"]}
    assert f"best-step{recorded['step']}-" in best_file.name


def test_a_run_stopped_by_max_time_ends_validated(train_here, capsys):
    limited = [*TINY, "max_time=00:00:00:02", "max_steps=1000000", "eval_interval=100000"]
    best, run_dir = train_here(*limited)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped early" and 0 < summary["steps"] < 1_000_000 and summary["wall_time_s"] < 60
    assert lightning_step_of_last_checkpoint(run_dir) == summary["steps"] == validated_steps(run_dir)[-1]
    assert len(sample_in_process(run_dir)) == 1 + 20 + 1  # the prompt, 20 characters, a newline
    # resumed with its budget spent: said so, and nothing changes (as for a run at its max_steps)
    files = {path: path.read_bytes() for path in sorted(run_dir.rglob("*")) if path.is_file()}
    capsys.readouterr()
    assert train_here(*limited, f"ckpt_path={run_dir}", run_dir=run_dir)[0] == pytest.approx(best)
    assert "and max_time is 00:00:00:02: nothing to train, nothing changed" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in sorted(run_dir.rglob("*")) if path.is_file()} == files


def test_early_stopping_ends_a_run_that_stopped_improving(train_here, capsys):
    settings = [*TINY, "lr=1e-12", "max_steps=200", "eval_interval=5", "callbacks.early_stopping.patience=2",
                "callbacks.early_stopping.min_delta=0.001"]
    _, run_dir = train_here(*settings)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped early" and summary["steps"] == 15  # checks at 5, 10, 15: no gain after 5
    assert lightning_step_of_last_checkpoint(run_dir) == 15 and validated_steps(run_dir) == [5, 10, 15]
    assert len(sample_in_process(run_dir)) == 1 + 20 + 1
    # resumed as it was set up: ended, so nothing to train (as at max_steps); without early stopping it goes on
    files = {path: path.read_bytes() for path in sorted(run_dir.rglob("*")) if path.is_file()}
    capsys.readouterr()
    train_here(*settings, f"ckpt_path={run_dir}", run_dir=run_dir)
    assert ("was stopped early at step 15 (val/loss had not improved for 2 validations): nothing to train, nothing "
            "changed. Give ~callbacks.early_stopping to train on.") in capsys.readouterr().err
    assert {path: path.read_bytes() for path in sorted(run_dir.rglob("*")) if path.is_file()} == files
    train_here(*settings, "~callbacks.early_stopping", "max_steps=25", f"ckpt_path={run_dir}", run_dir=run_dir)
    assert lightning_step_of_last_checkpoint(run_dir) == 25


@pytest.mark.parametrize("override", ["data.block_size=48", "model.block_size=48", "block_size=48"])
def test_any_spelling_of_block_size_trains_a_block_48_model(train_here, override):
    _, run_dir = train_here(*[a for a in TINY if not a.startswith("block_size")], "max_steps=4", override)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["model"]["block_size"] == 48
    assert checkpoint["state_dict"]["model.pos_emb.weight"].shape[0] == 48
    assert json.loads((run_dir / "summary.json").read_text())["tokens"] == 4 * 16 * 48


def test_lightning_max_steps_run_samples_through_the_command_line(train_here, tmp_path):
    _, run_dir = train_here(*TINY, "trainer.max_steps=12")
    result = run_script("sample.py", f"ckpt={run_dir}", "prompt=To", "num_tokens=20", "seed=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("To") and len(result.stdout) == 2 + 20 + 1
    assert "best-step12-" in result.stderr


def test_fine_tuning_reports_the_checkpoints_model_and_block_size(train_here, tmp_path):
    _, source = train_here(*TINY_CNN, "block_size=24", "max_steps=4", run_dir=tmp_path / "cnn")
    _, tuned = train_here(*TINY_RUN, f"init_from={source}", "max_steps=6", run_dir=tmp_path / "tuned")
    summary = json.loads((tuned / "summary.json").read_text())
    assert summary["model"] == "cnn" and summary["tokens"] == 6 * 16 * 24
    checkpoint = torch.load(tuned / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["model"]["block_size"] == 24


@pytest.mark.parametrize(("overrides", "message"), [
    (["model=cnn", "n_head=2"], "n_head applies to model=gpt only; this run trains model=cnn: drop n_head"),
    (["init_from=some/run", "n_layer=3"], "n_layer does not apply with init_from: a fine-tuned run keeps its "
                                          "checkpoint's model"),
    (["init_from=some/run", "model.activation=gelu"], "model.activation does not apply with init_from"),
])
def test_knobs_that_do_not_apply_to_the_run_are_refused(compose_config, overrides, message):
    with pytest.raises(CharLMError, match=f"^{message}"):
        prepare_run_config(compose_config(*overrides), overrides)


def test_a_sweep_over_models_keeps_n_head_for_the_gpt_jobs_only(compose_config):
    overrides = ["model=cnn", "n_head=2"]  # one job of `-m model=cnn,gpt n_head=2`
    settings = prepare_run_config(compose_config(*overrides), overrides, sweep=True)
    assert "n_head" not in settings.model  # nor in its HParams
    resumed = [*overrides, "ckpt_path=that/job"]  # resuming that job takes the arguments it started with
    assert "n_head" not in prepare_run_config(compose_config(*resumed), resumed).model
