"""Prompts and paths as people type them.

Hydra's override grammar rejects most text as a bare value (spaces, commas, '=', quotes, brackets,
letters beyond ASCII), so before Hydra parses a command line, `prompt=TEXT` (any text the shell
passed), `prompt_file=PATH` (a UTF-8 file) and `prompt=-` (standard input) become one quoted override
holding exactly that text. So does a path (PATH_KEYS) that Hydra would not read as that path: one that
exists with characters Hydra splits at (a sweep's job folder `0_model=cnn,n_embd=16` pastes as it is),
or one Hydra cannot read at all (`~/my text (1).txt`, with `~` expanded as the shell would). Any other
keeps Hydra's grammar: `-m data.path=a.txt,b.txt` sweeps over two files (without -m, Hydra asks which
was meant).
"""

import os
import re
import sys
from pathlib import Path

from charlm.core.errors import CharLMError
from charlm.core.sweep import asks_for_sweep, hydra_reading


def hydra_quoted(text: str) -> str:
    """`text` as a single-quoted Hydra value that composes back to exactly `text`: backslashes and
    quotes escaped, and `${` too, which would start an interpolation."""
    # Hydra reads a run of backslashes literally unless a quote, `${` or the closing quote follows it
    escaped = re.sub(r"(\\+)(?='|\$\{|$)", lambda run: run.group(1) * 2, text)
    escaped = escaped.replace("'", "\\'").replace("${", "\\${")
    return f"'{escaped}'"


def prompt_text(argument: str) -> str:
    key, _, value = argument.partition("=")
    if key == "prompt":
        return sys.stdin.read() if value == "-" else value
    path = Path(value).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CharLMError(f"prompt_file not found: {path}") from None
    except UnicodeDecodeError:
        raise CharLMError(f"prompt_file is not UTF-8 text: {path}") from None
    except OSError as err:
        raise CharLMError(f"cannot read prompt_file {path}: {err.strerror}") from None


def user_path(text: str) -> Path:
    """A path option of an argparse tool (`--out=~/m.npz`), `~` expanded as the shell does only at a
    word's start."""
    return Path(text).expanduser()


# Every command's options that name a file or folder (a command without one refuses it, quoted or not).
PATH_KEYS = ("ckpt", "ckpt_path", "init_from", "data.path", "data.cache_dir", "paths.root", "out", "hydra.run.dir",
             "hydra.sweep.dir")


def take_text_arguments(argv: list[str] | None = None) -> None:
    """Rewrite prompts and paths in sys.argv (or `argv`) in place, as described above. In a sweep (-m), a
    path that does not exist but whose comma-separated parts all do is a sweep over them
    (`evaluate.py -m ckpt=RUN_A,RUN_B`)."""
    argv = sys.argv if argv is None else argv
    sweep = asks_for_sweep(argv)
    if {"prompt", "prompt_file"} <= {argument.partition("=")[0] for argument in argv[1:]}:
        raise CharLMError("prompt and prompt_file both give the prompt; give one")
    for i, argument in enumerate(argv[1:], start=1):
        key, _, value = argument.partition("=")
        if key in ("prompt", "prompt_file"):
            argv[i] = f"prompt={hydra_quoted(prompt_text(argument))}"
        elif key in PATH_KEYS and value and value != "null" and not value.startswith(("'", '"')):
            reading, whole = hydra_reading(argument), Path(value).expanduser()
            as_is = reading is not None and not reading.is_sweep_override() and reading.value() == value
            parts = [os.path.expanduser(part) for part in value.split(",")]
            if reading is None and sweep and not whole.exists() and all(Path(part).exists() for part in parts):
                argv[i] = f"{key}={','.join(map(hydra_quoted, parts))}"
            elif reading is None or whole.exists() and not as_is:
                argv[i] = f"{key}={hydra_quoted(str(whole))}"
