"""What users type and see: prompts as the shell passes them, TensorBoard that compares runs, instant
answers from the entry points, and what to do after a run."""

import re
import shlex
import subprocess
import sys

import forked
import pytest
from conftest import ROOT, TINY, run_script, sample_in_process
from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from charlm.core.errors import CharLMError, command_for
from charlm.core.prompts import hydra_quoted, take_text_arguments
from charlm.core.sweep import as_dict

TRICKY = ["To be, or not", "RÖMEO 🌹: é", "朱丽叶, (hark)! = 'x'", "a\\b ${x} \\'", "[1,2] {a: b} ~x %s"]


@pytest.fixture(scope="module")
def polyglot_run(tmp_path_factory):
    """A tiny model trained on text with every character the tricky prompts use."""
    from conftest import train_in_process

    folder = tmp_path_factory.mktemp("polyglot")
    corpus = folder / "text.txt"
    corpus.write_text(("".join(TRICKY) + "\nline two\n") * 300, encoding="utf-8")
    train_in_process(folder / "run", *TINY, f"data.path={corpus}", "max_steps=4", "eval_interval=4")
    return folder / "run"


@pytest.mark.parametrize("text", TRICKY)
def test_quoting_for_hydra_gives_back_the_exact_text(compose_config, text):
    from conftest import CONF
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        assert compose(config_name="sample", overrides=[f"prompt={hydra_quoted(text)}"]).prompt == text


def test_prompts_as_the_shell_passes_them(polyglot_run, tmp_path):
    for text in TRICKY:  # each as sample.py reads its arguments, in this process
        argv = ["sample.py", f"prompt={text}"]
        take_text_arguments(argv)  # prompt=TEXT becomes prompt=QUOTED, which Hydra reads back as TEXT
        assert sample_in_process(polyglot_run, 5, argv[1].removeprefix("prompt=")).startswith(text)
    text = TRICKY[2]  # and through a process: commas, brackets, '=', quotes and CJK
    result = run_script("sample.py", f"ckpt={polyglot_run}", f"prompt={text}", "num_tokens=5", "seed=0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(text) and len(result.stdout) == len(text) + 5 + 1
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("line two\nRÖMEO", encoding="utf-8")
    from_file = run_script("sample.py", f"ckpt={polyglot_run}", f"prompt_file={prompt_file}", "num_tokens=5")
    assert from_file.returncode == 0 and from_file.stdout.startswith("line two\nRÖMEO")
    from_stdin = run_script("sample.py", f"ckpt={polyglot_run}", "prompt=-", "num_tokens=5", input="朱丽叶")
    assert from_stdin.returncode == 0 and from_stdin.stdout.startswith("朱丽叶")
    # the errors, in this process (that every entry point's errors are one line: test_reliability.py)
    with pytest.raises(CharLMError, match="not in the model's vocabulary: 'Z'"):
        sample_in_process(polyglot_run, prompt="Zebra")
    with pytest.raises(CharLMError, match="prompt_file not found"):
        take_text_arguments(["sample.py", f"prompt_file={tmp_path / 'none.txt'}"])
    with pytest.raises(CharLMError, match="prompt and prompt_file both give the prompt; give one"):
        take_text_arguments(["sample.py", f"prompt_file={prompt_file}", "prompt=ROMEO"])  # not: the last one wins


def test_paths_as_the_shell_passes_them(tmp_path, monkeypatch):
    """`evaluate.py -m ckpt=A,B` sweeps over two runs; a job folder with a comma in its name stays one path;
    a name Hydra's grammar cannot read (`~`, brackets, letters beyond ASCII) is one path, `~` expanded."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    monkeypatch.setenv("HOME", str(tmp_path))
    run_a, run_b, job = tmp_path / "a", tmp_path / "b", tmp_path / "0_model=cnn,n_embd=16"
    for folder in (run_a, run_b, job):
        folder.mkdir()
    cases = [(["-m", f"ckpt={run_a},{run_b}"], [str(run_a), str(run_b)]),
             (["-m", "ckpt=~/a,~/b"], [str(run_a), str(run_b)]),
             (["-m", f"ckpt={job}"], [str(job)]),  # the whole path exists: one path
             ([f"ckpt={run_a},{run_b}"], [str(run_a), str(run_b)]),  # no -m: as is (Hydra asks what was meant)
             (["-m", f"ckpt={run_a},{tmp_path / 'none'}"], [str(run_a), str(tmp_path / "none")]),  # as Hydra reads it
             (["data.path=~/my text (1).txt"], [str(tmp_path / "my text (1).txt")]),  # missing: one path, said later
             (["data.path=~/Ωmega.txt"], [str(tmp_path / "Ωmega.txt")]),
             (["paths.root=~/runs"], [str(tmp_path / "runs")]),
             (["hydra.run.dir=~/runs/big"], [str(tmp_path / "runs" / "big")]),
             (["-m", "data.path=choice(a.txt,b.txt)"], ["a.txt", "b.txt"]),  # Hydra's grammar, untouched
             (["data.path=tinyshakespeare"], ["tinyshakespeare"])]
    for args, values in cases:
        argv = ["train.py", *args]
        take_text_arguments(argv)
        [override] = OverridesParser.create().parse_overrides([argv[-1]])
        sweep = override.is_sweep_override()
        parsed = [getattr(v, "text", v) for v in override.sweep_iterator()] if sweep else [override.value()]
        assert parsed == values, argv
    # what a sweep's labels and job folders, the report and HParams show of a path quoted here: the path
    argv = ["train.py", "data.path=~/my text (1).txt", "-m", "ckpt=~/a,~/b"]
    take_text_arguments(argv)
    assert as_dict(argv[1:]) == {"data.path": str(tmp_path / "my text (1).txt"), "-m": "",
                                 "ckpt": f"'{run_a}','{run_b}'"}  # a sweep's values stay as the sweep says


def hparams_of(run_dir) -> tuple[dict, set]:
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert "_hparams_/experiment" not in content  # TensorBoard then puts the settings that differ first
    hparams = {key: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
               for key, value in start.session_start_info.hparams.items()}
    metrics = {tag for tag in events.Tags()["scalars"] if tag.startswith("hparams/")}
    return hparams, metrics


def test_every_run_has_its_settings_and_results_in_tensorboards_hparams_tab(trained_run):
    hparams, metrics = hparams_of(trained_run)
    assert hparams["model"] == "gpt" and hparams["model.n_embd"] == 16 and hparams["lr"] == pytest.approx(1e-3)
    assert hparams["optimizer.warmup_steps"] == 100 and hparams["data.vocab"] == "chars"
    assert metrics == {"hparams/best_val_loss", "hparams/best_val_bpc", "hparams/parameters", "hparams/tokens_per_s"}
    events = EventAccumulator(str(trained_run / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"lr/adamw", "train/loss", "val/loss", "val/bpc"} <= tags
    assert "epoch" not in tags and not any(tag.startswith("lr-AdamW") for tag in tags)


def test_a_run_shows_its_models_flops_and_ends_with_the_commands_to_use_it(train_here, capsys, caplog, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["train.py"])  # started as `python train.py`
    _, run_dir = train_here(*TINY, "max_steps=3", "eval_interval=3")
    out = capsys.readouterr().out
    # 3 steps log no training loss (every log_every_n_steps): the summary shows none, rather than nan
    assert re.search(r"\nfinal val/loss \d\.\d{4}, best val/loss \d\.\d{4} at step 3\n", out)
    assert f"next:\n  python sample.py ckpt={run_dir}\n  python evaluate.py ckpt={run_dir}\n" \
           f"  tensorboard --logdir {run_dir}" in out
    # Lightning's model summary: the FLOPs of one block (T=16) through the 1-layer, 16-wide GPT, attention
    # included: 2 T per weight of its matrices (3C^2 + C^2 + 4C^2 + 4C^2 in the block, C x 65 in the head)
    # and 2 T^2 C for each of the two attention products
    T, C = 16, 16
    flops = 2 * T * (12 * C * C + C * 65) + 2 * 2 * T * T * C  # 147,968: "147 K" (without attention "131 K")
    summary = next(r.getMessage() for r in caplog.records if "Total Flops" in r.getMessage())
    assert summary.splitlines()[-1].split() == [*get_human_readable_count(flops).split(), "Total", "Flops"]


def test_a_run_that_saved_no_checkpoint_offers_no_commands_for_it(train_here, capsys):
    _, run_dir = train_here(*TINY, "+trainer.fast_dev_run=true")  # Lightning's one-step smoke test
    out = capsys.readouterr().out
    assert "trained 1 step, 256 tokens" in out and "best checkpoint: -\n" in out
    assert "next:" not in out and not list((run_dir / "checkpoints").glob("*.ckpt"))
    _, run_dir = train_here(*TINY, "~callbacks.checkpoint", "max_steps=3", run_dir=run_dir.parent / "no-best")
    out = capsys.readouterr().out  # no best checkpoint, but last.ckpt: its sample and the commands for it
    assert "best checkpoint: -\nsample:\n" in out and f"next:\n  charlm sample ckpt={run_dir}" in out


def test_the_commands_a_run_prints_start_the_way_it_was_started(tmp_path, monkeypatch):
    # `charlm train` (or `python -m charlm train`) anywhere: the console script, not a script that is not there
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["charlm train"])
    assert command_for("sample") == "charlm sample"
    monkeypatch.setattr(sys, "argv", ["train.py"])  # a train.py of another project, without our sample.py
    (tmp_path / "train.py").write_text("")
    assert command_for("evaluate") == "charlm evaluate"
    # the repository's scripts from another folder: the path as typed, quoted where the shell needs it
    repo = tmp_path / "my repo"
    repo.mkdir()
    for script in ("train.py", "sample.py"):
        (repo / script).write_text("")
    monkeypatch.setattr(sys, "argv", ["my repo/train.py"])
    assert command_for("sample") == "python 'my repo/sample.py'"
    monkeypatch.setattr(sys, "argv", ["my repo/sample.py"])  # sample.py says how to train ("no run yet")
    assert command_for("train") == "python 'my repo/train.py'"


def modules_imported(importtime_log: str) -> set[str]:
    """Module names from `python -X importtime` output."""
    return {line.rsplit("|", 1)[-1].strip() for line in importtime_log.splitlines() if line.startswith("import time")}


@pytest.mark.parametrize("script", ["train.py", "sample.py", "evaluate.py"])
@pytest.mark.parametrize("flag", ["--cfg job", "--help"])
def test_config_answers_import_neither_torch_nor_lightning(script, flag):
    """`--cfg job`, `--help` (and mistyped overrides) are answered before the heavy imports."""
    result = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / script), *flag.split()],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = modules_imported(result.stderr)
    assert "hydra" in imported and not imported & {"torch", "lightning"}
    if flag == "--help":  # every knob from the schemas, with its default and doc
        knobs = {"train.py": ["model: cnn, gpt", "optimizer.muon_lr", "only embeddings, head, norms and biases"],
                 "sample.py": ["top_p", "float | null"], "evaluate.py": ["data.train_fraction", "stride"]}[script]
        assert all(knob in result.stdout for knob in knobs) and "schema" not in result.stdout


@pytest.mark.parametrize(("override", "error"), [
    ("nlayer=3", "nlayer"), ("lr=nan", "error: lr must be a finite number > 0, got nan"),
    ("data.path=nope.txt", "error: data file not found: nope.txt"),
    ("init_from=nope.ckpt", "error: checkpoint not found: nope.ckpt"),
    ("ckpt_path=last", "error: no run under outputs/runs has checkpoints/last.ckpt; train one with "
                       f"`python {shlex.quote(str(ROOT / 'train.py'))}`")])
def test_a_mistake_is_answered_without_torch(tmp_path, override, error):
    """A mistyped key, a bad value, a missing data file or checkpoint is refused before torch and Lightning load."""
    result = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "train.py"), override],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and error in result.stderr
    imported = modules_imported(result.stderr)
    assert not imported & {"torch", "lightning"}
    assert list(tmp_path.iterdir()) == []  # nor does it leave a run folder


def test_one_charlm_command_runs_every_entry_point(trained_run, tmp_path):
    """`charlm` (the console script; `python -m charlm` here, the same function): --help lists the
    commands without importing torch, and each command reaches its entry point with its arguments."""
    from charlm.__main__ import COMMANDS

    charlm = [sys.executable, "-X", "importtime", "-m", "charlm"]
    listing = subprocess.run([*charlm, "--help"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and all(f"\n  {name} " in listing.stdout for name in COMMANDS)
    assert not modules_imported(listing.stderr) & {"torch", "hydra"}
    config = subprocess.run([*charlm, "train", "--cfg", "job", "n_layer=3"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert config.returncode == 0 and "n_layer: 3" in config.stdout
    sampled = forked.run(["-m", "charlm", "sample", f"ckpt={trained_run}", "num_tokens=7", "prompt=The king"], ROOT)
    assert sampled.returncode == 0 and sampled.stdout.startswith("The king") and len(sampled.stdout) == 16
    for args, message in [(["nonsense"], "unknown command 'nonsense'"),
                          (["export", str(tmp_path / "none.ckpt")], "checkpoint not found")]:
        failed = forked.run(["-m", "charlm", *args], ROOT)
        assert failed.returncode == 2 and failed.stderr.startswith(f"error: {message}"), failed.stderr
    # as `charlm --help` invites: each command's own help, status 0 (the scripts': test above)
    for name in sorted(COMMANDS.keys() - {"train", "sample", "evaluate"}):
        helped = forked.run(["-m", "charlm", name, "--help"], ROOT)
        first_line = helped.stdout.partition("\n")[0]  # named as typed: `charlm NAME`
        assert helped.returncode == 0 and first_line.startswith((f"usage: charlm {name}", f"charlm {name}")), (
            name, first_line, helped.stderr[-500:])
