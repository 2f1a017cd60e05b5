"""Trackers beside TensorBoard: a CSV file, MLflow against a SQLite store, W&B offline; resume continues
the same tracker run; a missing package or an absent MLflow server is one line."""

import csv
import http.server
import importlib.util
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from conftest import TINY, free_port

from charlm.core.errors import CharLMError, log
from charlm.core.run_folder import TrainLog, write_train_log
from charlm.training.trackers import check_trackers, mlflow_logger


def test_csv_logger_writes_val_loss_at_every_validation(train_here, capsys):
    _, run_dir = train_here(*TINY, "logger=csv", "max_steps=30", "eval_interval=10")
    assert "tensorboard --logdir" not in capsys.readouterr().out  # no TensorBoard logs to look at
    with (run_dir / "csv" / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [int(row["step"]) for row in rows if row["val/loss"]] == [9, 19, 29]
    best = json.loads((run_dir / "summary.json").read_text())["best_val_loss"]
    assert [float(row["best_val_loss"]) for row in rows if row["best_val_loss"]] == [pytest.approx(best)]


def api(port: int, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/{path}",
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_mlflow_records_the_run_in_sqlite_and_a_resume_continues_it(train_here, tmp_path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    _, run_dir = train_here(*TINY, "logger=[tensorboard,mlflow]", f"paths.root={out}", "max_steps=20",
                            "eval_interval=10")
    assert not any(cwd.iterdir())  # everything under the output root; no ./mlruns
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("runs").experiment_id])
    assert run.info.run_id == json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    assert run.data.params["model"] == "gpt" and run.data.params["model.n_embd"] == "16"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [9, 19]
    best = json.loads((run_dir / "summary.json").read_text())["best_val_loss"]
    assert run.data.metrics["best_val_loss"] == pytest.approx(best)
    assert client.list_artifacts(run.info.run_id, "samples")  # the text samples

    capsys.readouterr()
    train_here(*TINY, "logger=[tensorboard,mlflow]", f"paths.root={out}", "max_steps=30", "eval_interval=10",
               f"ckpt_path={run_dir}", run_dir=tmp_path / "unused")
    [printed] = [line.strip() for line in capsys.readouterr().out.splitlines() if line.startswith("  mlflow ui")]
    [resumed] = client.search_runs([run.info.experiment_id])
    assert resumed.info.run_id == run.info.run_id
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [9, 19, 29]

    # the `mlflow ui` command the run printed serves the run table (its REST API), with no other server
    assert printed == (f"mlflow ui --backend-store-uri sqlite:///{out}/mlflow.db "
                       f"--default-artifact-root {out}/mlartifacts")
    port = free_port()
    # It runs gunicorn as a child process, which outlives a stopped `mlflow ui`: hence a session of its own
    # to stop as one.
    # One worker instead of four: serving one request needs no more, and starts 3 s sooner.
    server = subprocess.Popen([sys.executable, "-m", *shlex.split(printed), "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], cwd=cwd, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while True:
            try:
                experiments = api(port, "experiments/search?max_results=10")["experiments"]
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "mlflow ui did not start"
                time.sleep(0.5)
        [experiment] = [e for e in experiments if e["name"] == "runs"]
        runs = api(port, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        assert [r["info"]["run_id"] for r in runs] == [run.info.run_id]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        deadline = time.time() + 30
        while not process_group_gone(server.pid):
            assert time.time() < deadline, "mlflow ui's gunicorn outlived it"
            time.sleep(0.2)
    assert not any(cwd.iterdir())  # the printed command makes no ./mlruns where the user starts it


def process_group_gone(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_new_mlflow_store_leaves_train_log_writing(tmp_path, capfd):
    """MLflow sets up a new SQLite store with Alembic, whose logging.config call closes every handler and
    replaces the root logger's: train.log used to stop at that point of a run, and the set-up printed
    its INFO lines (one per migration) on the console."""
    pytest.importorskip("mlflow")
    root, handler = logging.getLogger(), TrainLog()  # as Hydra's job logging installs it for train.py
    root.addHandler(handler)
    try:
        write_train_log(tmp_path)
        log.warning("before")
        mlflow_logger(str(tmp_path), None, None, str(tmp_path / "out"))
        log.warning("after")
        assert handler in root.handlers
    finally:
        root.removeHandler(handler)
        handler.target.close()
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert [line.rsplit("] ", 1)[-1] for line in lines] == ["before", "after"]
    printed = capfd.readouterr()
    assert "INFO" not in printed.out + printed.err


def test_wandb_runs_offline_without_a_login_and_a_resume_continues_its_run(train_here, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no W&B settings
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    _, run_dir = train_here(*TINY, "logger=wandb", "max_steps=10", "eval_interval=10")
    assert "anonymous" not in capfd.readouterr().err  # wandb's warning about an argument Lightning passes
    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]
    train_here(*TINY, "logger=wandb", "max_steps=20", "eval_interval=10", f"ckpt_path={run_dir}",
               run_dir=tmp_path / "unused")
    offline = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(f"-{run_id}") for name in offline)


def test_a_tracker_whose_package_is_missing_is_one_line(compose_config, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(CharLMError, match=r"^logger=mlflow needs the mlflow package: pip install -e '.\[tracking\]'"):
        check_trackers(compose_config("logger=[tensorboard,mlflow]"))


def test_an_mlflow_server_that_does_not_answer_is_one_line_not_minutes_of_retries(compose_config):
    port = free_port()  # nothing listens there
    with pytest.raises(CharLMError, match=rf"^logger.mlflow.tracking_uri=http://127.0.0.1:{port}: no server answers "
                                          r"there \(.*refused\); start one \(mlflow server\), or leave tracking_uri"):
        check_trackers(compose_config("logger=mlflow", f"logger.mlflow.tracking_uri=http://127.0.0.1:{port}"))
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501
    threading.Thread(target=server.handle_request, daemon=True).start()
    try:  # a server that answers, whatever it says, is MLflow's to judge
        check_trackers(compose_config("logger=mlflow", f"logger.mlflow.tracking_uri=http://127.0.0.1:"
                                                       f"{server.server_port}"))
    finally:
        server.server_close()
