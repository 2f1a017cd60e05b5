"""The portable export format: one .npz holding every weight (named as in the torch state_dict)
plus `__meta__`, a JSON string with the model config, the vocabulary and the data settings of the run it
came from. Readable without torch."""

import json
import zipfile
from pathlib import Path

import numpy as np

from charlm.core.atomic import atomic_write
from charlm.core.errors import CharLMError

FORMAT = "charlm-npz"
VERSION = 1
SUFFIX = ".npz"  # an export's name; tools write exports under it, and torch files under any other
META = "__meta__.npy"  # inside every export (a zip), and in no torch file


def is_export(path) -> bool:
    """Whether a file reads as an export: named .npz, or a zip holding the export's metadata (an export
    renamed by hand; a torch checkpoint is a zip too, without it)."""
    path = Path(path).expanduser()
    if path.suffix == SUFFIX:
        return True
    try:
        with zipfile.ZipFile(path) as archive:  # reads the archive's directory, not its contents
            return META in archive.namelist()
    except (OSError, zipfile.BadZipFile):  # a folder, a missing file, or no zip at all
        return False


def check_output_name(out: Path, export: bool) -> None:
    """Tools write exports under .npz names and torch files under any other, so the two kinds stay
    apart by name too: a tool writing one kind refuses a name of the other."""
    if (Path(out).suffix == SUFFIX) != export:
        kind = f"an export needs the {SUFFIX} suffix" if export else f"a {SUFFIX} name would be read as an export"
        raise CharLMError(f"--out {out}: {kind}; give {Path(out).with_suffix(SUFFIX if export else '.pt')}")


def write_export(path: Path, model_config: dict, vocab: str, arrays: dict[str, np.ndarray],
                 vocab_mode: str = "chars", data: dict | None = None) -> None:
    """`data`: the data settings the model's run recorded, which evaluate.py scores it with."""
    meta = {"format": FORMAT, "version": VERSION, "model": model_config, "vocab": vocab, "vocab_mode": vocab_mode,
            "data": data}
    # Through an open file: np.savez would append .npz to a name without it.
    atomic_write(path, lambda file: np.savez(file, __meta__=np.array(json.dumps(meta)), **arrays))


def read_export(path) -> tuple[dict, dict[str, np.ndarray]]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CharLMError(f"export not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(str(arrays.pop("__meta__")))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        raise CharLMError(f"not a readable charlm export (truncated or another file): {path}") from None
    if meta.get("format") != FORMAT or not {"model", "vocab"} <= meta.keys():
        raise CharLMError(f"not a charlm export: {path}")
    return meta, arrays
