"""What every entry point gets from charlm.core.cli.run_cli, seen from a process of its own."""

import subprocess
import sys

# atexit handlers run last-in, first-out: the one registered first reports last, on what the interpreter's
# final garbage collections will find; the task's file handler, registered as loggers and trackers
# register theirs once a run imports them, runs first.
ENTRY_POINT = """
import atexit, gc, sys
files = []
atexit.register(lambda: print(f"frozen at exit: {gc.get_freeze_count() > 0}; closed: {files[0].closed}"))

def task():
    files.append(open(sys.argv[1], "w"))
    atexit.register(files[0].close)
    files[0].write("written before exit")

from charlm.core.cli import run_cli
run_cli(task)
"""


def test_an_entry_point_ends_without_collecting_every_object_and_still_closes_its_files(tmp_path):
    """With torch and Lightning loaded, the interpreter's final collections take over a second; run_cli
    freezes what is left once the task's atexit handlers have run, so files are still flushed and closed."""
    written = tmp_path / "written.txt"
    result = subprocess.run([sys.executable, "-c", ENTRY_POINT, str(written)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "frozen at exit: True; closed: True"
    assert written.read_text() == "written before exit"
