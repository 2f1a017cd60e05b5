"""The private internals of torch this package knows without importing torch: its checkpoint format
(torch's own: charlm.inference.internals; Lightning's: charlm.training.internals); and one of Hydra's,
at the end.

A training checkpoint read with NumPy is what sample.py needs to run a GPT on the NumPy engine without
importing torch, which took most of a `python sample.py` (docs/performance.md).

torch.save writes a zip of `data.pkl` (the object, tensors as references to storages) and one file per
storage. Checkpoints here hold plain types and float32/integer tensors only (they load with torch.load's
weights_only=True), so a pickle reader that knows torch's tensor-rebuilding function and its storage
types reads them all. Storages are read only when a tensor the caller asked for views them, so sample.py
skips the optimizer state. Anything else (bfloat16 weights, another object, another layout: a torch
release that changes the format) raises `NotReadable`, and the caller loads the file with torch instead;
tests/core/test_internals.py compares the two readers on a real checkpoint.
"""

import collections
import pickle
import sys
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                  "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                  "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class NotReadable(Exception):
    """The file is not one this reader knows; torch.load decides what it is."""


class Storage(NamedTuple):
    """One of the file's storages, read only when a tensor the caller asked for views it."""

    key: str
    dtype: type
    numel: int


class Tensor(NamedTuple):
    """A tensor before its storage is read: the view (offset, size, stride) of `storage` it is."""

    storage: Storage
    offset: int
    size: tuple
    stride: tuple


def rebuild_tensor(storage: Storage, offset: int, size: tuple, stride: tuple, *_) -> Tensor:
    """torch._utils._rebuild_tensor_v2's job, deferred: a view reaching outside its storage (a damaged or
    crafted file) is refused, as torch refuses it."""
    if len(size) != len(stride) or min((offset, *size, *stride), default=0) < 0:
        raise NotReadable(f"tensor of size {size} and stride {stride}")
    if 0 not in size and offset + sum((n - 1) * step for n, step in zip(size, stride, strict=True)) >= storage.numel:
        raise NotReadable(f"tensor of size {size} and stride {stride} at {offset} outside its storage")
    return Tensor(storage, offset, tuple(size), tuple(stride))


class CheckpointUnpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, prefix: str):
        super().__init__(archive.open(f"{prefix}data.pkl"))
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        raise NotReadable(f"{module}.{name}")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid  # ("storage", FloatStorage's dtype, "0", "cpu", numel)
        if kind != "storage" or dtype not in STORAGE_DTYPES.values():
            raise NotReadable(str(pid))
        return Storage(str(key), dtype, int(numel))

    def read(self, storage: Storage) -> np.ndarray:
        if storage.key not in self.storages:
            data = self.archive.read(f"{self.prefix}data/{storage.key}")
            self.storages[storage.key] = np.frombuffer(data, dtype=storage.dtype, count=storage.numel)
        return self.storages[storage.key]

    def arrays(self, obj):
        """`obj` with each tensor (and storage) in it as a read-only NumPy array."""
        if isinstance(obj, Tensor):
            data = self.read(obj.storage)
            return np.lib.stride_tricks.as_strided(data[obj.offset :], shape=obj.size,
                                                   strides=[step * data.itemsize for step in obj.stride],
                                                   writeable=False)
        if isinstance(obj, Storage):
            return self.read(obj)
        if isinstance(obj, dict):
            return type(obj)((key, self.arrays(value)) for key, value in obj.items())
        if type(obj) in (list, tuple):
            return type(obj)(self.arrays(value) for value in obj)
        return obj


def read_torch_file(path: Path, keys: tuple[str, ...] | None = None) -> dict:
    """The object torch.save wrote to `path`, tensors as NumPy arrays; NotReadable if this reader cannot
    be sure of it (then torch.load can). `keys`: only these entries of a saved dict, and only their
    tensors' bytes read (a training checkpoint's optimizer state is most of its size)."""
    try:
        with zipfile.ZipFile(path) as archive:
            [pickled] = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            prefix = pickled.removesuffix("data.pkl")
            if archive.read(f"{prefix}byteorder").decode() != sys.byteorder:
                raise NotReadable("byte order")
            unpickler = CheckpointUnpickler(archive, prefix)
            saved = unpickler.load()
            if keys is not None and isinstance(saved, dict):
                saved = {key: saved[key] for key in keys if key in saved}
            return unpickler.arrays(saved)
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        raise NotReadable(str(err)) from None


def skip_hydras_mode_probe(app_config: str) -> bool:
    """Hydra composes an app's whole config once only to read `hydra.mode` (a config may turn a plain run
    into a sweep), then again to run it: 0.1 s each, a sixth of a small model's `sample.py`. The config
    named here never sets the mode, so unless the command line does (`hydra.mode=...`) the probe's
    answer is known: None (a plain run, or a sweep with -m). Hydra's private `Hydra.get_mode`; where a
    release lacks it, nothing changes (False). tests/core/test_internals.py checks the answers agree."""
    try:
        from hydra._internal.hydra import Hydra
    except ImportError:
        return False
    probe = getattr(Hydra, "get_mode", None)
    if not callable(probe):
        return False
    hydras_probe = getattr(probe, "hydras_probe", probe)

    def get_mode(self, config_name: str | None, overrides: list[str]):
        if config_name == app_config and not any("hydra.mode" in override for override in overrides):
            return None
        return hydras_probe(self, config_name=config_name, overrides=overrides)

    get_mode.hydras_probe = hydras_probe
    Hydra.get_mode = get_mode
    return True


def skip_unused_help_lists() -> bool:
    """Hydra's `--help` lists every config group with its options for $APP_CONFIG_GROUPS and
    $HYDRA_CONFIG_GROUPS whether the help template shows them or not: a hundred compositions of the
    group repository, a second or more of `python train.py --help`. Ours never does (the `group_help`
    resolver lists the groups), so where a template names neither, the lists are left empty. Hydra's
    private `Hydra.get_help` and `format_config_groups`; where a release lacks them, nothing changes
    (False). tests/core/test_internals.py checks the help text is the same."""
    try:
        from hydra._internal.hydra import Hydra
    except ImportError:
        return False
    get_help = getattr(Hydra, "get_help", None)
    if not callable(get_help) or not callable(getattr(Hydra, "format_config_groups", None)):
        return False
    hydras_get_help = getattr(get_help, "hydras_get_help", get_help)

    def lazy_get_help(self, help_cfg, *args, **kwargs):
        if "CONFIG_GROUPS" not in str(help_cfg.template):
            self.format_config_groups = lambda *unused, **also_unused: ""  # this Hydra object only
        return hydras_get_help(self, help_cfg, *args, **kwargs)

    lazy_get_help.hydras_get_help = hydras_get_help
    Hydra.get_help = lazy_get_help
    return True
