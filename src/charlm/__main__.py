"""One command line for everything: `charlm COMMAND [arguments]`, or `python -m charlm COMMAND ...`.

Light to import: a command's modules (torch, Lightning) load only when it runs, so `charlm --help`
answers at once."""

import importlib
import sys

# command: (module, function, what it does). train, sample and evaluate take Hydra's key=value
# overrides, as train.py, sample.py and evaluate.py do; the tools take their own --options.
COMMANDS = {
    "train": ("charlm.commands", "train_main", "train a model (key=value overrides; conf/config.yaml)"),
    "sample": ("charlm.commands", "sample_main", "stream text from a checkpoint (conf/sample.yaml)"),
    "evaluate": ("charlm.commands", "evaluate_main", "a checkpoint's loss on a held-out split (conf/evaluate.yaml)"),
    "attention": ("charlm.commands", "attention_main", "pictures of what a model attends to (conf/attention.yaml)"),
    "export": ("charlm.inference.export", "main", "weights, config and vocabulary in one .npz, for the NumPy engine"),
    "quantize": ("charlm.inference.quantize", "main", "int8 weights, and what they cost in loss and buy in size"),
    "report": ("charlm.training.report", "main", "compare the runs of a sweep or folder"),
    "bench": ("charlm.tools.bench", "main", "speed: training, generation, data, optimizer, speedrun, pictures"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_text}" for name, (_, _, help_text) in COMMANDS.items()]
    return ("usage: charlm COMMAND [arguments]   (COMMAND --help for its own)\n\ncommands:\n" + "\n".join(lines))


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(usage())
        return
    command = sys.argv[1]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    module, function, _ = COMMANDS[command]
    entry = getattr(importlib.import_module(module), function)
    sys.argv = [f"charlm {command}", *sys.argv[2:]]  # what Hydra and argparse read
    if function == "main":  # the tools: argparse mains, their errors turned into one line
        from charlm.core.cli import run_cli

        run_cli(entry, sys.argv[1:])
    else:
        entry()


if __name__ == "__main__":
    main()
