import os
import socket
import subprocess
from pathlib import Path

import forked
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from charlm.core.cli import prepare_hydra

prepare_hydra()  # the schemas and resolvers every composed config needs, whichever test composes first


def share_the_cores() -> None:
    """Under pytest-xdist each worker (and every process it starts) gets its share of the cores:
    two workers each running torch's default of one thread per core would oversubscribe them, and
    small models slow down many times when threads fight."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        os.environ["OMP_NUM_THREADS"] = str(max(1, cpus // workers))


share_the_cores()
# Inductor's first compile in each process probes every vector instruction set the CPU reports by
# building and loading a test library per set (seconds into an empty cache, and again in every
# process): the tests take the CPU's word, as torch's own switch allows; kernels are still built for it.
os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")
ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "src" / "charlm" / "conf"

# A model small enough that a CLI run of a few dozen steps takes seconds.
TINY_RUN = ["data.eval_batch_size=1024", "callbacks.text_sample.num_tokens=40", "callbacks.progress_bar.refresh_rate=0"]
TINY = ["n_layer=1", "n_head=2", "n_embd=16", "block_size=16", *TINY_RUN]
TINY_CNN = ["model=cnn", "n_layer=1", "n_embd=16", "block_size=16", *TINY_RUN]  # n_head does not apply
# (fine-tuning, init_from: the model comes from the checkpoint, so only TINY_RUN)


@pytest.fixture(autouse=True, scope="session")
def token_cache(tmp_path_factory):
    """The token cache of every run in the tests (subprocesses included), not the user's."""
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield Path(os.environ["XDG_CACHE_HOME"]) / "charlm" / "tokens"
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME")
    else:
        os.environ["XDG_CACHE_HOME"] = saved


@pytest.fixture(autouse=True, scope="session")
def user_facing_errors():
    """Tests check the one-line errors users see. Debug switches left set in the caller's shell would
    turn them into tracebacks in every subprocess, so the session runs without them."""
    saved = {name: os.environ.pop(name) for name in ("CHARLM_DEBUG", "HYDRA_FULL_ERROR") if name in os.environ}
    yield
    os.environ.update(saved)


@pytest.fixture(autouse=True, scope="session")
def forking_server(token_cache, user_facing_errors):
    """The server the command-line runs fork from (see forked.py), started with the session's environment
    while the first tests run."""
    if forked.FORKS:
        forked.server()
    yield
    forked.close_server()


@pytest.fixture(autouse=True)
def own_environment():
    """Each test starts from the session's environment: runs in the test process set variables (Lightning's
    seed, its DDP port, Inductor's cache folder) that would otherwise reach later tests' runs."""
    saved = dict(os.environ)
    yield
    for name in os.environ.keys() - saved.keys():
        del os.environ[name]
    os.environ.update(saved)


def compose_run(run_dir: Path, *overrides: str):
    """The config `python train.py OVERRIDES hydra.run.dir=RUN_DIR` runs with, Hydra's part included and
    set as the current Hydra config (as Hydra sets it for a job)."""
    prepare_hydra()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def train_in_process(run_dir: Path, *overrides: str) -> float:
    """Train in this process as `python train.py OVERRIDES hydra.run.dir=RUN_DIR` would, without a
    Lightning start-up per run; the process's thread count and Hydra state are left as they were."""
    import torch

    from charlm.training.train import train

    threads = torch.get_num_threads()
    try:
        return train(compose_run(Path(run_dir), *overrides))
    finally:
        torch.set_num_threads(threads)
        HydraConfig.instance().cfg = None


def sample_in_process(run_dir: Path, num_tokens: int = 20, prompt: str = "T", *overrides: str) -> str:
    """What `python sample.py ckpt=RUN_DIR num_tokens=N prompt=TEXT seed=0 OVERRIDES` prints, run in this process."""
    import contextlib
    import io

    from charlm.inference.sample import sample

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="sample", overrides=[f"ckpt={run_dir}", f"num_tokens={num_tokens}",
                                                      f"prompt={prompt}", "seed=0", *overrides])
    with contextlib.redirect_stdout(io.StringIO()) as out:
        sample(cfg)
    return out.getvalue()


@pytest.fixture
def train_here(tmp_path):
    """train_in_process into tmp_path / "run" unless run_dir says otherwise; returns (best loss, run folder)."""

    def _train(*overrides: str, run_dir: Path | None = None):
        run_dir = Path(run_dir or tmp_path / "run")
        return train_in_process(run_dir, *overrides), run_dir

    return _train


@pytest.fixture
def compose_config():
    """Compose the real training config with overrides, as `python train.py` would."""
    prepare_hydra()

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


def run_script(script: str, *args: str, cwd: Path | None = None, timeout: int = 300,
               input: str | None = None) -> subprocess.CompletedProcess:
    """Run train.py / sample.py / evaluate.py through the command line, in a process of its own (forked.py)."""
    return forked.run([ROOT / script, *args], cwd or ROOT, input=input, timeout=timeout)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One real training run shared by the CLI tests: 40 steps of a tiny GPT on Tiny Shakespeare."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    result = run_script("train.py", *TINY, "max_steps=40", "eval_interval=20", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: to show a refused command changed nothing."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def refusal(main, argv: list[str], capsys) -> str:
    """What a tool's argparse `main` (export, bench, ...) prints when it refuses ARGV, run in this process as
    the `charlm` command runs it; the exit status of each entry point in a process is tested in
    test_reliability.py."""
    from charlm.core.cli import run_cli

    with pytest.raises(SystemExit) as stopped:
        run_cli(main, argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err
