import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from charlm.cli import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# A model small enough that a CLI run of a few dozen steps takes seconds.
TINY = ["n_layer=1", "n_head=2", "n_embd=16", "block_size=16", "data.eval_batch_size=1024",
        "callbacks.text_sample.num_tokens=40", "callbacks.progress_bar.refresh_rate=0"]


@pytest.fixture(autouse=True, scope="session")
def user_facing_errors():
    """Tests check the one-line errors users see. Debug switches left set in the caller's shell would
    turn them into tracebacks in every subprocess, so the session runs without them."""
    saved = {name: os.environ.pop(name) for name in ("CHARLM_DEBUG", "HYDRA_FULL_ERROR") if name in os.environ}
    yield
    os.environ.update(saved)


@pytest.fixture
def compose_config():
    """Compose the real training config with overrides, as `python train.py` would."""
    register_resolvers()

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


def run_script(script: str, *args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run train.py / sample.py through the real command line."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One real training run shared by the CLI tests: 40 steps of a tiny GPT on Tiny Shakespeare."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    result = run_script("train.py", *TINY, "max_steps=40", "eval_interval=20", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir
