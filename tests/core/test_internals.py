"""Training checkpoints read without torch (charlm.core.internals) hold exactly what torch.load reads;
skipping Hydra's mode probe gives the probe's answer, and skipping its unused help lists the same help."""

import copy
import zipfile

import numpy as np
import pytest
import torch
from conftest import CONF
from hydra import initialize_config_dir
from hydra._internal.hydra import Hydra
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from charlm.core.cli import prepare_hydra
from charlm.core.internals import NotReadable, read_torch_file, skip_hydras_mode_probe, skip_unused_help_lists


def assert_same(ours, theirs, where="checkpoint"):
    """Every value equal, tensors as NumPy arrays of the same dtype, shape and contents."""
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, np.ndarray) and ours.dtype == theirs.numpy().dtype, where
        assert np.array_equal(ours, theirs.numpy()), where
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and list(ours) == list(theirs), where
        for key in theirs:
            assert_same(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(theirs, list | tuple):
        assert type(ours) is type(theirs) and len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert ours == theirs and type(ours) is type(theirs), where


def test_a_training_checkpoint_reads_as_torch_reads_it(trained_run):
    """Weights, optimizer state, random states, Lightning's loop and callback state: all of it."""
    file = trained_run / "checkpoints" / "last.ckpt"
    assert_same(read_torch_file(file), torch.load(file, map_location="cpu", weights_only=True))


def test_asking_for_some_entries_reads_only_their_tensors(trained_run, monkeypatch):
    """sample.py reads a checkpoint's weights and settings, not the optimizer state that is most of it."""
    file = trained_run / "checkpoints" / "last.ckpt"
    read = []
    real_read = zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda self, name, *args: read.append(name) or real_read(self, name))
    ours = read_torch_file(file, keys=("hyper_parameters", "state_dict", "no such entry"))
    theirs = torch.load(file, map_location="cpu", weights_only=True)
    assert_same(ours, {key: theirs[key] for key in ("hyper_parameters", "state_dict")})
    with zipfile.ZipFile(file) as archive:
        sizes = {info.filename: info.file_size for info in archive.infolist() if "/data/" in info.filename}
    weights = sum(array.nbytes for array in ours["state_dict"].values())
    assert sum(sizes[name] for name in read if name in sizes) <= weights < sum(sizes.values()) / 2


def test_views_strides_and_offsets_survive(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    saved = {"t": base.t(), "slice": base[1:, 2:5], "tied": [base, base], "long": torch.tensor([1, -2]),
             "flags": torch.tensor([True, False]), "half": torch.ones(3, dtype=torch.float16), "nothing": None}
    torch.save(saved, tmp_path / "x.pt")
    assert_same(read_torch_file(tmp_path / "x.pt"), torch.load(tmp_path / "x.pt", weights_only=True))


def test_a_view_outside_its_storage_is_refused(tmp_path):
    """A crafted or damaged file must not make a view into memory beyond what the file holds."""
    torch.save({"w": torch.arange(6.0)}, tmp_path / "x.pt")
    assert read_torch_file(tmp_path / "x.pt")["w"].tolist() == [0, 1, 2, 3, 4, 5]
    with zipfile.ZipFile(tmp_path / "x.pt") as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    [pickled] = [name for name in entries if name.endswith("data.pkl")]
    # the tensor's size (6,) is pickled as the one-byte integer 6 (BININT1): make it 600
    entries[pickled] = entries[pickled].replace(b"K\x06\x85", b"MX\x02\x85", 1)
    with zipfile.ZipFile(tmp_path / "crafted.pt", "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    with pytest.raises(NotReadable, match="outside its storage"):
        read_torch_file(tmp_path / "crafted.pt")


@pytest.mark.parametrize("content", ["bfloat16", "object", "truncated", "text"])
def test_what_it_cannot_be_sure_of_is_left_to_torch(tmp_path, content):
    file = tmp_path / "x.ckpt"
    if content == "bfloat16":  # NumPy has no bfloat16
        torch.save({"w": torch.ones(2, dtype=torch.bfloat16)}, file)
    elif content == "object":  # anything but dicts, lists, numbers, strings and tensors
        torch.save({"device": torch.device("cpu")}, file)
    elif content == "truncated":
        torch.save({"w": torch.ones(1000)}, file)
        file.write_bytes(file.read_bytes()[:2000])
    else:
        file.write_text("not a checkpoint")
    with pytest.raises(NotReadable):
        read_torch_file(file)


@pytest.mark.parametrize("app", ["sample", "evaluate", "attention"])
def test_skipping_hydras_mode_probe_gives_the_probes_answer(app, monkeypatch):
    """The entry points whose config never sets hydra.mode compose it once, not twice, and run as before."""
    monkeypatch.setattr(Hydra, "get_mode", Hydra.get_mode)  # put Hydra's own back afterwards
    prepare_hydra()
    cases = [[], ["temperature=0.5", "seed=3"], ["hydra.mode=MULTIRUN"], ["hydra.mode=RUN"]]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        probed = [hydra.get_mode(config_name=app, overrides=list(overrides)) for overrides in cases]
        assert skip_hydras_mode_probe(app)
        assert [hydra.get_mode(config_name=app, overrides=list(overrides)) for overrides in cases] == probed
        assert hydra.get_mode(config_name="config", overrides=["hparams_search=lr_size"]) == probed[2]  # not skipped
        monkeypatch.setattr(Hydra, "compose_config", lambda *args, **kwargs: pytest.fail("composed to probe"))
        assert hydra.get_mode(config_name=app, overrides=[]) is None


@pytest.mark.parametrize("app", ["config", "sample"])
def test_help_without_hydras_unused_group_lists_reads_the_same(app, monkeypatch):
    """`--help` without the config-group lists no template of ours shows: the same text, and no list made.
    (Composed as Hydra's app_help does, without its logging set-up, which would outlive the test.)"""
    prepare_hydra()
    monkeypatch.setattr(Hydra, "get_help", getattr(Hydra.get_help, "hydras_get_help", Hydra.get_help))  # Hydra's
    parser = get_args_parser()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            hydra = GlobalHydra.instance().hydra
            cfg = hydra.compose_config(config_name=app, overrides=[], run_mode=RunMode.RUN)
            HydraConfig.instance().set_config(cfg)
            job = hydra.get_sanitized_cfg(copy.deepcopy(cfg), "job")
            theirs = hydra.get_help(cfg.hydra.help, job, parser, resolve=False)
            assert skip_unused_help_lists()
            monkeypatch.setattr(Hydra, "format_config_groups", lambda *args, **kwargs: pytest.fail("listed groups"))
            assert hydra.get_help(cfg.hydra.help, job, parser, resolve=False) == theirs
            assert {"config": "optimizer.muon_lr", "sample": "top_p"}[app] in theirs  # the knobs, listed
    finally:
        HydraConfig.instance().cfg = None
