"""evaluate.py: held-out loss that agrees with training's, sliding windows, test splits, byte-level runs."""

import json
import math
import re

import pytest
from conftest import CONF, TINY, TINY_RUN, run_script
from hydra import compose, initialize_config_dir

from charlm.core.errors import CharLMError
from charlm.inference.evaluate import evaluate, windows
from charlm.inference.export import export
from charlm.inference.sample import sample


def compose_named(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def test_the_command_agrees_with_the_runs_own_best_val_loss(trained_run):
    result = run_script("evaluate.py", f"ckpt={trained_run}")
    assert result.returncode == 0, result.stderr[-2000:]
    best = json.loads((trained_run / "summary.json").read_text())["best_val_loss"]
    [line] = [line for line in result.stdout.splitlines() if line.startswith("val blocks:")]
    assert float(line.split("loss ")[1].split()[0]) == pytest.approx(best, abs=1e-4)
    assert "over 111,536 characters (blocks of 16;" in line  # the whole split: 6,971 blocks of 16
    assert "%|" not in result.stderr  # no progress bar redrawn into a log that is not a terminal


def test_block_scoring_matches_training_exactly_and_sliding_scores_every_character_once(trained_run):
    results = evaluate(compose_named("evaluate", f"ckpt={trained_run}", "stride=4"))
    best = json.loads((trained_run / "summary.json").read_text())["best_val_loss"]
    assert results["blocks"]["loss"] == pytest.approx(best, abs=1e-5)
    assert results["sliding"]["scored"] == results["tokens"] - 1  # every target, once
    assert results["sliding"]["loss"] < math.log(65)


@pytest.mark.parametrize(("length", "block", "stride"), [(100, 16, 4), (100, 16, 16), (17, 16, 5), (1000, 32, 7)])
def test_sliding_windows_score_each_target_once_with_the_most_context(length, block, stride):
    scored = []
    for start, first in windows(length, block, stride):
        assert 0 <= start and start + block <= length
        scored += [start + i for i in range(first, block)]
    assert scored == list(range(length))


def test_a_test_split_is_scored_and_its_absence_named(train_here, tmp_path):
    _, run_dir = train_here(*TINY, "max_steps=6", "eval_interval=6", "data.test_fraction=0.05")
    results = evaluate(compose_named("evaluate", f"ckpt={run_dir}", "split=test"))
    assert results["tokens"] == int(1_115_394 * 0.05)  # the last 5%, as the run cut it
    with pytest.raises(CharLMError, match=r"this run has no test split \(data.test_fraction was 0\)"):
        evaluate(compose_named("evaluate", f"ckpt={run_dir}", "split=test", "data.test_fraction=0"))


def test_a_run_on_a_relative_path_is_scored_from_any_folder(train_here, tmp_path, monkeypatch):
    """data.path=corpus.txt, trained in one folder, scored from another: the checkpoint records the path
    absolute, and its export records it too (quantize, which shares the code, reads it the same way)."""
    (tmp_path / "start").mkdir()
    (tmp_path / "start" / "corpus.txt").write_text("to be, or not to be: that is the question\n" * 200)
    monkeypatch.chdir(tmp_path / "start")
    best, run_dir = train_here(*TINY, "data.path=corpus.txt", "max_steps=6", "eval_interval=6")
    monkeypatch.chdir(tmp_path)
    for scored in (run_dir, export(run_dir, out=tmp_path / "m.npz")):  # an export keeps the run's data settings
        results = evaluate(compose_named("evaluate", f"ckpt={scored}"))
        assert results["blocks"]["loss"] == pytest.approx(best, abs=1e-5)


def test_an_export_is_scored_like_its_checkpoint(trained_run, tmp_path):
    npz = export(trained_run, out=tmp_path / "model.npz")
    from_export = evaluate(compose_named("evaluate", f"ckpt={npz}"))
    from_checkpoint = evaluate(compose_named("evaluate", f"ckpt={trained_run}"))
    assert from_export["blocks"]["loss"] == pytest.approx(from_checkpoint["blocks"]["loss"], abs=1e-6)


def test_other_text_or_vocabulary_is_refused_everywhere(trained_run, train_here):
    with pytest.raises(CharLMError, match=r"read as bytes gives another vocabulary \(256 bytes\) than the model's "
                                          r"\(65 characters\)"):
        evaluate(compose_named("evaluate", f"ckpt={trained_run}", "data.vocab=bytes"))
    with pytest.raises(CharLMError, match=r"trained on a different vocabulary \(other data, or another data.vocab\)"):
        train_here(*TINY, "data.vocab=bytes", f"ckpt_path={trained_run}")


def test_a_byte_level_model_trains_fine_tunes_and_samples_utf8(train_here, tmp_path, capsys):
    french = tmp_path / "fr.txt"
    french.write_text("Ça va très bien, merci. Où est la bibliothèque ? Déjà vu, à bientôt !\n" * 200)
    _, run_dir = train_here(*TINY, f"data.path={french}", "data.vocab=bytes", "max_steps=30", "eval_interval=30",
                            "lr=1e-2", "optimizer.warmup_steps=0")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["best_val_loss"] < math.log(256) - 1  # it learns the bytes
    with pytest.raises(CharLMError, match=r"reads text as bytes: add data.vocab=bytes"):
        train_here(*TINY_RUN, f"init_from={run_dir}", "max_steps=2", run_dir=tmp_path / "ft")
    capsys.readouterr()
    sample(compose_named("sample", f"ckpt={run_dir}", "prompt='Ça'", "num_tokens=40", "seed=0"))
    out = capsys.readouterr().out
    assert out.startswith("Ça") and out.encode("utf-8").decode("utf-8") == out  # text, whatever the bytes
    evaluate(compose_named("evaluate", f"ckpt={run_dir}"))
    assert re.search(r"^val blocks: loss [0-9.]+ nats/byte, [0-9.]+ bpc over [0-9,]+ bytes \(blocks of 16; ",
                     capsys.readouterr().out)  # per byte, as enwik8 results are given


def test_a_fine_tuned_model_is_scored_on_the_text_it_was_tuned_on(trained_run, train_here, tmp_path):
    """That text has fewer characters than the model's vocabulary: its ids are mapped into it."""
    sonnet = tmp_path / "sonnet.txt"
    sonnet.write_text("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n" * 60)
    best, tuned = train_here(*TINY_RUN, f"init_from={trained_run}", f"data.path={sonnet}", "max_steps=4",
                             "eval_interval=4")
    results = evaluate(compose_named("evaluate", f"ckpt={tuned}"))
    assert results["tokens"] == len(sonnet.read_text()) - int(len(sonnet.read_text()) * 0.9)
    assert results["blocks"]["loss"] == pytest.approx(best, abs=1e-5)  # the run's own number
    moved = sonnet.rename(tmp_path / "moved.txt")  # the text the run recorded has moved: the error says how to go on
    with pytest.raises(CharLMError, match=f"^data file not found: {re.escape(str(sonnet))}; give the text with "
                                          r"data.path=PATH$"):
        evaluate(compose_named("evaluate", f"ckpt={tuned}"))
    moved_results = evaluate(compose_named("evaluate", f"ckpt={tuned}", f"data.path={moved}"))
    assert moved_results["blocks"]["loss"] == results["blocks"]["loss"]


HELD_OUT = [  # (overrides, the error)
    (["data.test_fraction=nan", "split=test"], r"data.test_fraction must be a finite number in \[0, 1\) or null"),
    (["data.test_fraction=0.5", "split=test"], r"data.train_fraction \(0.9\) \+ data.test_fraction \(0.5\) must be "
                                               r"below 1"),
    (["data.train_fraction=0.1"], r"that val split starts 10% into .*tinyshakespeare.txt, inside the first 90% "
                                  r"this run trained on"),
]


@pytest.mark.parametrize(("overrides", "message"), HELD_OUT)
def test_evaluate_checks_data_settings_as_train_does_and_scores_only_held_out_text(trained_run, overrides, message):
    with pytest.raises(CharLMError, match=f"^{message}"):
        evaluate(compose_named("evaluate", f"ckpt={trained_run}", *overrides))
