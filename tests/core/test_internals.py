"""Training checkpoints read without torch (charlm.core.internals) hold exactly what torch.load reads."""

import zipfile

import numpy as np
import pytest
import torch

from charlm.core.internals import NotReadable, read_torch_file


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
