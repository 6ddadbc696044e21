"""Resume after a stop the driver did not choose (issue 17): a seed-replicated study after
SIGINT, and any study after SIGKILL of the driver, whose saved Tune state is then older than
what Optuna and MLflow hold. Real Ray, Optuna and MLflow, as in test_e2e."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from study.cli import main
from study.searcher import MLFLOW_RUN_TAG, OUTCOME_ATTR, RAY_TRIAL_IDS, SEED_VALUES, SEEDS
from study.store import StudyStore

from .helpers import CLI_TIMEOUT_S, children, optuna_trials, run_until, tiny_spec

pytestmark = pytest.mark.ray
CURVES = ("fisher_trace", "train_loss", "val_accuracy", "epoch")


def kill_group(pgid: int, timeout_s: float = 30) -> None:
    """SIGKILL whatever is left of a process group (the Ray a killed driver started) and wait
    until none of it remains."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of group {pgid} survive SIGKILL")
        time.sleep(0.2)


def command(spec: Path, storage: Path, uri: str) -> list[str]:
    return [sys.executable, "-m", "study", "run", str(spec), "--storage", str(storage), "--tracking-uri", uri]


def assert_curves_unchanged_by_repeats(uri: str, runs: list[Any]) -> None:
    """A step may reach MLflow twice (reported again after a resume), never with another value."""
    client = MlflowClient(uri)
    for run in runs:
        for metric in CURVES:
            values: dict[int, set[float]] = defaultdict(set)
            for m in client.get_metric_history(run.info.run_id, metric):
                values[m.step].add(m.value)
            assert values, (run.info.run_id, metric)
            assert all(len(v) == 1 for v in values.values()), (metric, dict(values))


def test_seed_replicated_study_resumes_after_sigint_with_every_seed_once(
    ray_session: None, mlflow_uri: str, storage: Path, tmp_path: Path
) -> None:
    name = "resume-seeds"
    space = {"train.lr": {"grid": [0.02, 0.05, 0.03]}, "train.seed": {"grid": [0, 1]}}
    spec = tiny_spec(tmp_path, name, space=space, sampler="grid", num_samples=6, max_concurrent=1)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc, head = run_until(command(spec, storage, mlflow_uri), tmp_path, "[3/6]", env)  # mid-configuration
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=CLI_TIMEOUT_S)
    assert proc.returncode == 130, head + rest
    kill_group(proc.pid)

    assert main(["resume", name, "--storage", str(storage)]) == 0
    runs = children(mlflow_uri, name)
    pairs = sorted((r.data.params["train.lr"], r.data.params["train.seed"]) for r in runs)
    assert pairs == sorted((lr, seed) for lr in ("0.02", "0.05", "0.03") for seed in ("0", "1"))
    assert {r.data.tags["fishtune.outcome"] for r in runs} == {"completed"}
    trials = optuna_trials(storage, name)
    assert len(trials) == 3 and {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    by_id = {r.data.tags["fishtune.trial_id"]: r for r in runs}
    for t in trials:  # user_attrs name the replicas' MLflow runs, seeds and values
        replicas = [by_id[i] for i in t.user_attrs[RAY_TRIAL_IDS]]
        assert t.user_attrs[MLFLOW_RUN_TAG] == "fishtune.trial_id" and t.user_attrs[OUTCOME_ATTR] == "completed"
        assert t.user_attrs[SEEDS] == [0, 1] == [int(r.data.params["train.seed"]) for r in replicas]
        assert t.user_attrs[SEED_VALUES] == pytest.approx([r.data.metrics["val_accuracy"] for r in replicas])
        assert t.value == pytest.approx(sum(t.user_attrs[SEED_VALUES]) / 2)
    assert_curves_unchanged_by_repeats(mlflow_uri, runs)


def trial_started(run: Any) -> bool:
    return run.info.status == "RUNNING"


def third_epoch_logged(run: Any) -> bool:
    """A running trial past its second checkpoint. Not "exactly epoch 3": a fast machine's writer
    can land epochs 3, 4 and the run's end in one batch between two polls (CI, 2-second trials)."""
    return run.info.status == "RUNNING" and run.data.metrics.get("epoch", 0) >= 3


@pytest.mark.parametrize(
    ("seeded", "kill_when"),
    [(False, trial_started), (True, third_epoch_logged)],
    ids=["trial-not-saved", "seeds-checkpoint-not-saved"],
)
def test_killed_driver_resumes_without_duplicate_runs_or_changed_curves(
    ray_session: None, mlflow_uri: str, storage: Path, tmp_path: Path, seeded: bool, kill_when: Any
) -> None:
    """SIGKILL of `fishtune run` once two trials ended and the next one got as far as
    ``kill_when``. Tune's periodic save is put off (only the saves Tune forces every second
    checkpoint of a trial remain), so its state is older than Optuna's and MLflow's for certain:
    without the third trial (started, no checkpoint yet), or with the running trial's second
    checkpoint where MLflow has its third epoch (it is run again from epoch 2)."""
    name = f"resume-killed-{'seeds' if seeded else 'plain'}"
    space: dict[str, Any] = {"train.lr": {"grid": [0.02, 0.05, 0.03]}}
    if seeded:
        space["train.seed"] = {"grid": [0, 1]}
    spec = tiny_spec(tmp_path, name, space=space, sampler="grid", num_samples=6 if seeded else 3, max_concurrent=1)
    text = yaml.safe_load(spec.read_text())
    text["train"] = {"epochs": 8, "batch_size": 16}  # long enough that a poll sees one mid-trial
    spec.write_text(yaml.safe_dump(text, sort_keys=False))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "100000"}
    proc, head = run_until(command(spec, storage, mlflow_uri), tmp_path, "[2/", env)
    deadline = time.monotonic() + 120
    while not [r for r in children(mlflow_uri, name) if kill_when(r)]:
        assert time.monotonic() < deadline and proc.poll() is None, head
        time.sleep(0.2)
    proc.kill()
    proc.wait(timeout=60)
    kill_group(proc.pid)
    assert StudyStore(storage, name).launches()[-1].finished is False, head

    assert main(["resume", name, "--storage", str(storage)]) == 0
    runs = children(mlflow_uri, name)
    assert len(runs) == len({r.data.tags["fishtune.trial_id"] for r in runs}) == (6 if seeded else 3), [
        (r.data.tags, r.info.status) for r in runs
    ]
    params = sorted((r.data.params["train.lr"], r.data.params["train.seed"]) for r in runs)
    assert len(set(params)) == len(params)  # every configuration and seed once
    assert {(r.data.tags["fishtune.outcome"], r.info.status) for r in runs} == {("completed", "FINISHED")}
    trials = optuna_trials(storage, name)
    assert len(trials) == 3 and {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    ids = {r.data.tags["fishtune.trial_id"] for r in runs}
    assert {i for t in trials for i in t.user_attrs[RAY_TRIAL_IDS]} == ids
    assert_curves_unchanged_by_repeats(mlflow_uri, runs)
    assert StudyStore(storage, name).launches()[-1].finished is True
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name(name).experiment_id
    retired = client.search_runs([exp], run_view_type=ViewType.DELETED_ONLY)
    # A trial Tune's saved state lacks (whether the kill came before Tune saved it is a race) has
    # its run retired, not left beside its rerun: at most the one trial that was running.
    assert len(retired) <= 1
    assert all(r.data.tags["fishtune.outcome"] == "lost" and r.info.status == "KILLED" for r in retired)
