"""Safe file writes: crash-safe replacement of a file, and folders checked before writing."""

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from charlm.core.errors import CharLMError


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through `write` into a temp file beside `path`, fsync it, then rename it over `path`, which a
    failed write leaves as it was. A write the system refuses (a full disk, a quota) is an OSError naming
    `path`, whatever error the writer raised about it (torch.save: "unexpected pos ...")."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except Exception as err:
        if (refused := system_error(err)) is None:
            raise
        raise OSError(refused.errno, refused.strerror, str(path)) from err  # the file's name, not the temp's
    finally:
        temp.unlink(missing_ok=True)


def system_error(err: BaseException) -> OSError | None:
    """The operating system's error behind `err`, if there is one: writers such as torch.save raise their
    own error while handling it ("unexpected pos ..." for a full disk)."""
    for _ in range(10):  # a chain of errors is short; this bounds a cyclic one
        if err is None or isinstance(err, OSError) and err.strerror:
            return err
        err = err.__cause__ or err.__context__
    return None


def check_output(out: Path, *inputs: Path, option: str = "--out ") -> None:
    """A tool may write `out`: it is none of its inputs, not a folder, and its folder exists and can be written.
    `option`: how the tool's command line names it."""
    out = Path(out)
    for source in inputs:
        if out.resolve() == Path(source).resolve():
            raise CharLMError(f"{option}{out} is the input file itself, and no tool overwrites its input; "
                              "choose another path")
    if out.is_dir():
        raise CharLMError(f"{option}{out} is a folder; give a file path")
    if not out.parent.is_dir():
        raise CharLMError(f"output folder does not exist: {out.parent}")
    ensure_writable(out.parent)


def ensure_writable(folder: Path) -> None:
    """Create `folder` and write a probe file in it, or raise one CharLMError saying why not."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise CharLMError(f"cannot write to {folder}: {err.strerror or err}") from None
