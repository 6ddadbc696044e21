"""Helpers shared by the driver's tests: a tiny study spec, reading a study back, ports and waits."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml
from mlflow.tracking import MlflowClient

from study.store import StudyStore

ROOT = Path(__file__).resolve().parents[2]


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
    return optuna.load_study(study_name=study, storage=StudyStore(storage, study).optuna_url).trials


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
