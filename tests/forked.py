"""Command-line runs without paying the imports each time: forked from a server that made them once.

`python train.py` spends seconds importing torch, Lightning and Hydra before charlm's first line
runs, and the tests start dozens of such runs. Each test process starts one server that imports
them once; every run is a fork of it that takes the run's argv, working folder, environment and
standard streams, then runs the script as `python SCRIPT ARGS` (or `python -m MODULE ARGS`) would.
So everything after the imports is a real process of its own: Hydra, output, files, signals, atexit,
exit status. A run whose environment differs from the server's starts a fresh interpreter instead
(libraries read some variables at import). What happens before the imports (answers given without
torch, import time) is tested through `subprocess` directly.
"""

import contextlib
import gc
import importlib
import json
import os
import runpy
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRELOAD = ("torch", "lightning.pytorch", "hydra", "matplotlib.pyplot", "charlm.commands",
           "charlm.training.train", "charlm.inference.sample", "charlm.inference.export", "charlm.inference.pictures")
# Variables in which a run's environment may differ from the server's, all read long after the imports:
# pytest names the current test; PYTHONUNBUFFERED is set for every run; a run in the test's own process
# sets Lightning's seed and Inductor's pointer to its compiled code; Lightning reads SLURM's variables
# when a run starts, Inductor its cache folder when it compiles.
READ_AFTER_IMPORTS = ("PYTEST_CURRENT_TEST", "PYTHONUNBUFFERED", "PL_GLOBAL_SEED", "PL_SEED_WORKERS",
                      "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR", "SLURM_", "TORCHINDUCTOR_CACHE_DIR")
# Forking a process that has loaded these libraries is safe on Linux; elsewhere every run starts afresh.
FORKS = sys.platform == "linux"


def environment(extra: dict | None = None) -> dict:
    """A run's environment: this process's, unbuffered output, and `extra`."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}


def serve(channel: socket.socket) -> dict | None:
    """The server: fork a child per request and report how each ended; returns the request in a child."""
    for name in PRELOAD:
        importlib.import_module(name)
    gc.freeze()  # the children's collections leave the imported objects alone, so their pages stay shared
    pending = b""
    while True:
        readable, _, _ = select.select([channel], [], [], 0.01)
        if readable:
            received = channel.recv(65536)
            if not received:  # the tests are done
                return None
            pending += received
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    channel.close()
                    return request
                channel.sendall(json.dumps({"started": pid}).encode() + b"\n")
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            ended = {"ended": pid, "returncode": os.waitstatus_to_exitcode(status)}
            channel.sendall(json.dumps(ended).encode() + b"\n")


def become(request: dict) -> None:
    """In the forked child: take the run's folder, environment and streams, then run its script."""
    os.chdir(request["cwd"])
    new_compiler = request["env"].get("CXX") != os.environ.get("CXX")
    os.environ.clear()
    os.environ.update(request["env"])
    if new_compiler:  # Inductor reads CXX at import into its config: hand it over as a fresh import would
        import torch._inductor.config

        torch._inductor.config.cpp.cxx = (None, os.environ.get("CXX", "g++"))
    for fd, (path, flags) in enumerate([(request["stdin"], os.O_RDONLY), (request["stdout"], os.O_WRONLY),
                                        (request["stderr"], os.O_WRONLY)]):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    argv = request["argv"]
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        sys.path[0] = request["cwd"]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path[0] = str(Path(argv[0]).parent)
        runpy.run_path(argv[0], run_name="__main__")


class Server:
    """One per test process (conftest starts it with the session); `start` forks a run from it."""

    def __init__(self) -> None:
        self.channel, theirs = socket.socketpair()
        self.env = environment()
        self.folder = Path(tempfile.mkdtemp(prefix="forked-"))  # the server's log, the runs' streams
        self.log = open(self.folder / "server.log", "w")
        self.process = subprocess.Popen([sys.executable, __file__, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                        stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, env=self.env)
        theirs.close()
        self.pending = b""
        self.ended: dict[int, int] = {}
        self.started: list[int] = []

    def can_run(self, env: dict) -> bool:
        differs = {key for key in env.keys() | self.env.keys() if env.get(key) != self.env.get(key)}
        return all(key.startswith(READ_AFTER_IMPORTS) or key == "CXX" for key in differs)  # CXX: see become

    def read(self, timeout: float | None) -> dict | None:
        """The next message from the server, or None if none came within `timeout` seconds."""
        while b"\n" not in self.pending:
            self.channel.settimeout(timeout)
            try:
                received = self.channel.recv(65536)
            except (TimeoutError, BlockingIOError):
                return None
            if not received:
                raise RuntimeError(f"the forking server died: {(self.folder / 'server.log').read_text()[-3000:]}")
            self.pending += received
        line, self.pending = self.pending.split(b"\n", 1)
        message = json.loads(line)
        if "ended" in message:
            self.ended[message["ended"]] = message["returncode"]
        return message

    def start(self, request: dict) -> int:
        self.channel.sendall(json.dumps(request).encode() + b"\n")
        while "started" not in (message := self.read(None)):
            pass
        self.started.append(message["started"])
        return message["started"]

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):  # news of runs that ended
            while self.read(0) is not None:
                pass
        for pid in set(self.started) - set(self.ended):  # a run a failed test left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.channel.close()
        self.process.terminate()  # it may still be importing
        self.process.wait(timeout=60)
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


_server: Server | None = None


def server() -> Server:
    global _server
    if _server is None:
        _server = Server()
    return _server


def close_server() -> None:
    global _server
    if _server is not None:
        _server.close()
        _server = None


class Run:
    """A forked run with the parts of subprocess.Popen the tests use (text output, read when it ends)."""

    def __init__(self, argv: list, cwd: Path, env: dict, input: str | None = None):
        self.args = [str(arg) for arg in argv]
        self.returncode: int | None = None
        self.folder = Path(tempfile.mkdtemp(prefix="run-", dir=server().folder))
        streams = {name: self.folder / name for name in ("stdin", "stdout", "stderr")}
        streams["stdin"].write_text(input or "")
        streams["stdout"].touch()
        streams["stderr"].touch()
        self.pid = server().start({"argv": self.args, "cwd": str(cwd), "env": env,
                                   **{name: str(path) for name, path in streams.items()}})

    def poll(self) -> int | None:
        while self.pid not in server().ended and server().read(0) is not None:
            pass
        self.returncode = server().ended.get(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                print(f"{self.args} still running after {timeout} s; its output so far:", file=sys.stderr)
                for name in ("stdout", "stderr"):
                    print((self.folder / name).read_text()[-3000:], file=sys.stderr)
                raise subprocess.TimeoutExpired(self.args, timeout)
            server().read(remaining)
        return self.returncode

    def communicate(self, input: None = None, timeout: float | None = None) -> tuple[str, str]:
        """Its output once it has ended (`input` goes to `start`)."""
        self.wait(timeout)
        stdout, stderr = ((self.folder / name).read_text() for name in ("stdout", "stderr"))
        shutil.rmtree(self.folder, ignore_errors=True)
        return stdout, stderr

    def stderr_so_far(self) -> str:
        """What the run has written to standard error until now (it may still be running)."""
        return (self.folder / "stderr").read_text()

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start(argv: list, cwd: Path, env: dict | None = None, input: str | None = None,
          fresh: bool = False) -> "Run | subprocess.Popen":
    """`python ARGV` in `cwd` with this process's environment plus `env`, output captured as text: forked
    where the environment allows it (READ_AFTER_IMPORTS) unless `fresh`, else in a fresh interpreter."""
    env = environment(env)
    if FORKS and not fresh and server().can_run(env):
        return Run(argv, cwd, env, input)
    return subprocess.Popen([sys.executable, *map(str, argv)], cwd=cwd, env=env,
                            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(argv: list, cwd: Path, env: dict | None = None, input: str | None = None, fresh: bool = False,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Like subprocess.run(..., capture_output=True, text=True) for `python ARGV` (see `start`)."""
    process = start(argv, cwd, env, input, fresh)
    try:
        stdout, stderr = process.communicate(None if isinstance(process, Run) else input, timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


if __name__ == "__main__":
    child = serve(socket.socket(fileno=int(sys.argv[1])))
    if child is not None:
        become(child)
