"""Helpers shared by the driver's tests: a tiny study spec, reading a study back, ports, waits,
the CLI in a child process and servers started for a test."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from mlflow.tracking import MlflowClient

from study.optuna_storage import open_storage
from study.store import StudyStore

ROOT = Path(__file__).resolve().parents[2]
CLI = "import sys; from study.cli import main; sys.exit(main(sys.argv[1:]))"
# Hang guards for child processes, not timings: generous, because on a loaded machine (the suite
# with two busy processes beside it, load 6–12 on 2 cores) a child runs 5–6× slower than here quiet.
CLI_TIMEOUT_S = 300  # one CLI command, or a driver's shutdown after a signal
STUDY_TIMEOUT_S = 900  # a child `fishtune run` of a tiny study, start to finish


def tiny_spec(tmp_path: Path, name: str, **search: Any) -> Path:
    """A study of an MLP on digits that trains in seconds: 2 epochs, 4 trials, 2 at a time."""
    spec = {
        "name": name,
        "model": {"name": "mlp", "hidden": 16, "depth": 1},
        "train": {"epochs": 2, "batch_size": 128},
        "fisher": {"samples": 16, "schedule": {"dense_until_epoch": 1, "dense_every": 2, "sparse_every": 5}},
        "penalty": {"kind": "fisher", "coef": 0.01},
        "search": {
            "space": {"train.lr": {"loguniform": [0.01, 0.1]}, "penalty.coef": {"loguniform": [0.001, 0.1]}},
            "num_samples": 4,
            "max_concurrent": 2,
            **search,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def children(uri: str, study: str) -> list[Any]:
    """The study's trial runs in the MLflow store at ``uri``."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    return client.search_runs([exp.experiment_id], filter_string="tags.`fishtune.role` = 'trial'")


def optuna_trials(storage: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=open_storage(StudyStore(storage, study).optuna_url)).trials


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` every 0.5 s; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)


def run_cli(args: list[str], cwd: Path, script: str = CLI) -> subprocess.CompletedProcess[str]:
    """``fishtune ARGS`` in a child process started in ``cwd`` (``script`` runs the CLI's main)."""
    return subprocess.run(
        [sys.executable, "-c", script, *args], cwd=cwd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
    )


def run_until(
    command: list[str], cwd: Path, line_prefix: str, env: dict[str, str], timeout_s: float = 240
) -> tuple[subprocess.Popen[str], str]:
    """Start ``command`` in its own process group and read its output up to the first line
    starting with ``line_prefix`` (or past ``timeout_s``); the child keeps running."""
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines = []
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(line_prefix) or time.monotonic() > deadline:
            break
    return proc, "".join(lines)


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 right now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass
class Served:
    """A server a test started; ``output`` holds what it printed once it has been stopped."""

    proc: subprocess.Popen[str]
    output: str = ""


@contextlib.contextmanager
def serving(command: list[str], ready_url: str, timeout_s: float, cwd: Path = ROOT) -> Iterator[Served]:
    """Run ``command`` until the block ends, once ``ready_url`` answers; fail with the server's
    output if it exits first or does not answer within ``timeout_s``. At the end SIGKILL to the
    server's whole process group: a SIGTERM handler may wait on its children, and children left
    alive (MLflow's workers and job runners) would hold the output pipe open."""
    proc = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    served = Served(proc)
    try:
        deadline = time.monotonic() + timeout_s
        while not answers(ready_url):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, f"{command[:4]} did not answer {ready_url} within {timeout_s:.0f} s"
            time.sleep(0.3)
        yield served
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(proc.pid, signal.SIGKILL)
        served.output = proc.communicate(timeout=30)[0]
