"""End to end on a real local Ray, a real Optuna storage and a real MLflow SQLite store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from study.cli import main
from study.store import StudyStore

from .helpers import CLI_TIMEOUT_S, ROOT, STUDY_TIMEOUT_S, children, optuna_trials, run_until, tiny_spec, wait_for

pytestmark = pytest.mark.ray


def test_study_runs_end_to_end_and_follows_the_mlflow_contract(
    ray_session: None, mlflow_uri: str, storage: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tiny_spec(tmp_path, "e2e")
    assert main(["run", str(spec), "--storage", str(storage), "--tracking-uri", mlflow_uri]) == 0
    out = capsys.readouterr().out
    assert "[4/4]" in out and "trial(s) at a time" in out

    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("e2e")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`fishtune.role` = 'study'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["fishtune.searched"] == "train.lr,penalty.coef"
    assert parent.data.params["train.epochs"] == "2" and parent.data.params["search.seed"] == "0"
    assert {"fishtune.version.torch", "fishtune.version.ray", "fishtune.launch.1"} <= set(parent.data.tags)
    assert parent.info.status == "FINISHED"

    runs = children(mlflow_uri, "e2e")
    assert len(runs) == 4
    assert len({r.data.tags["fishtune.trial_id"] for r in runs}) == 4
    for run in runs:
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["fishtune.outcome"] == "completed" and tags["fishtune.device"] == "cpu"
        assert run.data.params["train.lr"] and run.data.params["penalty.coef"]
        for key in ("final_test_accuracy", "final_val_accuracy", "best_test_accuracy", "fisher_peak"):
            assert key in run.data.metrics
        for metric in ("fisher_trace", "fisher_trace_stderr", "train_loss", "epoch", "val_accuracy", "test_loss"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
            assert steps == sorted(set(steps)), metric  # increasing, never repeated
        assert "curves.parquet" in {a.path for a in client.list_artifacts(run.info.run_id)}
        fisher_steps = [m.step for m in client.get_metric_history(run.info.run_id, "fisher_trace")]
        assert fisher_steps[0] == 0
        epochs = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "epoch")}
        assert sorted(epochs.values())[-1] == 2.0

    trials = optuna_trials(storage, "e2e")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4

    assert main(["status", "e2e", "--storage", str(storage)]) == 0
    status = capsys.readouterr().out
    assert all(r.data.tags["fishtune.trial_id"] in status for r in runs)
    assert "completed 4" in status

    # The analysis reads the same store: every trial, recomputed measures equal the logged ones.
    out = tmp_path / "report"
    assert main(["analyze", "e2e", "--storage", str(storage), "--out", str(out)]) == 0
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 4 and set(table["outcome"]) == {"completed"}
    assert table["mismatch"].isna().all()  # recomputed early/peak values equal the trainable's
    assert (table["raw_fisher_peak"] == table["logged_fisher_peak"]).all()  # fisher_peak is the smoothed read
    assert table["fisher_peak"].notna().all() and (table["fisher_peak_stderr"] > 0).all()
    assert table["val_accuracy_at_peak"].notna().all()  # epoch metrics read from curves.parquet too

    # Extending: a larger num_samples continues the same Optuna study and parent run.
    assert main(["run", str(spec), "--storage", str(storage), "--tracking-uri", mlflow_uri, "--num-samples", "6"]) == 0
    assert len(children(mlflow_uri, "e2e")) == 6
    assert len(optuna_trials(storage, "e2e")) == 6
    assert len(StudyStore(storage, "e2e").launches()) == 2

    # A changed search space is refused unless it becomes a new study.
    changed = tiny_spec(tmp_path, "e2e", space={"train.lr": {"loguniform": [0.001, 0.1]}})
    assert main(["run", str(changed), "--storage", str(storage), "--tracking-uri", mlflow_uri]) == 2
    assert "different search space" in capsys.readouterr().err
    new_study = ["--new-study", "e2e-b", "--num-samples", "1"]
    assert main(["run", str(changed), "--storage", str(storage), "--tracking-uri", mlflow_uri, *new_study]) == 0
    assert len(children(mlflow_uri, "e2e-b")) == 1 and len(children(mlflow_uri, "e2e")) == 6


def test_diverging_trials_are_recorded_and_pruned(
    ray_session: None, mlflow_uri: str, storage: Path, tmp_path: Path
) -> None:
    spec = tiny_spec(
        tmp_path,
        "e2e-diverge",
        space={"train.lr": {"grid": [1.0e12, 0.05]}},
        sampler="grid",
        num_samples=2,
    )
    assert main(["run", str(spec), "--storage", str(storage), "--tracking-uri", mlflow_uri]) == 0
    by_lr = {float(r.data.params["train.lr"]): r for r in children(mlflow_uri, "e2e-diverge")}
    assert by_lr[1.0e12].data.tags["fishtune.outcome"] == "diverged"
    assert by_lr[1.0e12].data.tags["fishtune.diverged_reason"] == "nonfinite"
    assert by_lr[0.05].data.tags["fishtune.outcome"] == "completed"
    states = {t.params["train.lr"]: t.state for t in optuna_trials(storage, "e2e-diverge")}
    assert states == {1.0e12: optuna.trial.TrialState.PRUNED, 0.05: optuna.trial.TrialState.COMPLETE}


def test_seed_replicas_give_one_optuna_trial_per_configuration(
    ray_session: None, mlflow_uri: str, storage: Path, tmp_path: Path
) -> None:
    space = {"train.lr": {"grid": [0.02, 0.05]}, "train.seed": {"grid": [0, 1]}}
    spec = tiny_spec(tmp_path, "e2e-seeds", space=space, sampler="grid", num_samples=4)
    assert main(["run", str(spec), "--storage", str(storage), "--tracking-uri", mlflow_uri]) == 0
    runs = children(mlflow_uri, "e2e-seeds")
    pairs = sorted((r.data.params["train.lr"], r.data.params["train.seed"]) for r in runs)
    assert pairs == [("0.02", "0"), ("0.02", "1"), ("0.05", "0"), ("0.05", "1")]
    trials = optuna_trials(storage, "e2e-seeds")
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t in trials:  # valued at the replicas' mean
        replicas = [r for r in runs if float(r.data.params["train.lr"]) == t.params["train.lr"]]
        mean = sum(r.data.metrics["val_accuracy"] for r in replicas) / 2
        assert t.value == pytest.approx(mean)


@pytest.mark.parametrize(
    ("signum", "last"),
    [(signal.SIGINT, False), (signal.SIGTERM, True)],
    ids=["SIGINT-mid-launch", "SIGTERM-with-every-trial-started"],
)
def test_interrupted_study_resumes_without_duplicates(
    ray_session: None, mlflow_uri: str, storage: Path, tmp_path: Path, signum: int, last: bool
) -> None:
    """A signal to a running `fishtune run` (own local Ray) → exit 130; `resume` finishes it.

    ``last``: once every trial of the launch has started. Tune's clean-up then marks the running
    trials terminated, and counting them made the launch look finished: exit 0, "nothing to
    resume", the running trials lost."""
    name = f"e2e-resume-{signal.Signals(signum).name.lower()}"
    n = 2 if last else 6
    spec = tiny_spec(tmp_path, name, num_samples=n, max_concurrent=2 if last else 1)
    if last:  # long enough to be running when the signal comes
        spec.write_text(spec.read_text().replace("epochs: 2", "epochs: 40"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "study", "run", str(spec), "--storage", str(storage), "--tracking-uri", mlflow_uri]
    proc, head = run_until(command, tmp_path, f"study {name}: running" if last else "[2/6]", env)
    if last:
        wait_for(lambda: len(children(mlflow_uri, name)) == n, CLI_TIMEOUT_S, "every trial's MLflow run")
    proc.send_signal(signum)
    rest, _ = proc.communicate(timeout=CLI_TIMEOUT_S)
    output = head + rest
    assert proc.returncode == 130, output
    assert f"fishtune resume {name}" in output
    assert StudyStore(storage, name).launches()[-1].finished is False

    assert main(["resume", name, "--storage", str(storage)]) == 0
    runs = children(mlflow_uri, name)
    assert len(runs) == n
    assert len({r.data.tags["fishtune.trial_id"] for r in runs}) == n
    assert {r.data.tags["fishtune.outcome"] for r in runs} == {"completed"}
    trials = optuna_trials(storage, name)
    assert len(trials) == n
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert StudyStore(storage, name).launches()[-1].finished is True


def test_asha_stops_trials_early_and_optuna_sees_them_pruned(
    ray_session: None, mlflow_uri: str, storage: Path, tmp_path: Path
) -> None:
    """One trial at a time, seeded grid order: the hopeless learning rates reach ASHA's first rung
    after a good one has set the cut-off and are stopped there."""
    spec = tiny_spec(
        tmp_path,
        "e2e-asha",
        space={"train.lr": {"grid": [0.05, 1.0e-6, 2.0e-6, 0.04]}},
        sampler="grid",
        num_samples=4,
        max_concurrent=1,
        scheduler={"asha": {"grace_period": 1, "reduction_factor": 2}},
    )
    path = Path(spec)
    text = yaml.safe_load(path.read_text())
    text["train"]["epochs"] = 3
    path.write_text(yaml.safe_dump(text, sort_keys=False))
    assert main(["run", str(spec), "--storage", str(storage), "--tracking-uri", mlflow_uri]) == 0
    outcomes = {
        float(r.data.params["train.lr"]): r.data.tags["fishtune.outcome"] for r in children(mlflow_uri, "e2e-asha")
    }
    stopped = [lr for lr, outcome in outcomes.items() if outcome == "early_stopped"]
    assert stopped and all(lr < 1e-5 for lr in stopped), outcomes
    states = {t.params["train.lr"]: t.state for t in optuna_trials(storage, "e2e-asha")}
    for lr in stopped:
        assert states[lr] == optuna.trial.TrialState.PRUNED
    assert all(states[lr] == optuna.trial.TrialState.COMPLETE for lr, o in outcomes.items() if o == "completed")


def test_failed_trial_shows_its_error_and_exits_1(
    ray_session: None, mlflow_uri: str, storage: Path, tmp_path: Path
) -> None:
    spec = tiny_spec(tmp_path, "e2e-fail", space={"train.lr": {"grid": [0.05]}}, sampler="grid", num_samples=1)
    text = yaml.safe_load(Path(spec).read_text())
    text["model"] = {"name": "boom", "hidden": 8, "depth": 1}
    Path(spec).write_text(yaml.safe_dump(text, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "faults"), "FISHTUNE_TEST_FAULT": "model_raises"}
    command = [sys.executable, "-m", "study", "run", str(spec), "--storage", str(storage), "--tracking-uri", mlflow_uri]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=STUDY_TIMEOUT_S)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "failed" in proc.stdout and "injected fault: this model cannot train" in proc.stdout
    assert "on node" in proc.stdout
    (run,) = children(mlflow_uri, "e2e-fail")
    assert run.data.tags["fishtune.outcome"] == "failed" and run.info.status == "FAILED"
    assert "injected fault" in run.data.tags["fishtune.error"]
    assert "Traceback" in run.data.tags["fishtune.error"]  # the trial's own traceback
    assert "fishtune.restarts" not in run.data.tags  # a deterministic error is not retried
    assert proc.stdout.count("lost its worker") == 0
    (trial,) = optuna_trials(storage, "e2e-fail")
    assert trial.state == optuna.trial.TrialState.FAIL


def test_killed_trial_worker_resumes_from_its_checkpoint_in_the_same_run(
    mlflow_uri: str, storage: Path, tmp_path: Path
) -> None:
    """SIGKILL of a trial's process mid-epoch: Ray restarts it from its checkpoint (epoch 1), the
    MLflow child run continues, and no step is logged twice or skipped."""
    spec = tiny_spec(tmp_path, "e2e-kill", space={"train.lr": {"grid": [0.05, 0.02]}}, sampler="grid", num_samples=2)
    text = yaml.safe_load(spec.read_text())
    text["data"] = {"train_size": 256}  # batch 32 → 8 steps per epoch
    text["train"] = {"epochs": 3, "batch_size": 32}
    text["fisher"]["schedule"] = {"dense_until_epoch": 5, "dense_every": 4, "sparse_every": 4}
    text["search"]["max_concurrent"] = 1
    spec.write_text(yaml.safe_dump(text, sort_keys=False))
    marker = tmp_path / "killed"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "tests" / "faults"),
        "FISHTUNE_TEST_FAULT": "kill_worker_once",
        "FISHTUNE_TEST_FAULT_MARKER": str(marker),
        "FISHTUNE_TEST_KILL_AT_STEP": "12",  # in the middle of epoch 2
    }
    command = [sys.executable, "-m", "study", "run", str(spec), "--storage", str(storage), "--tracking-uri", mlflow_uri]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=STUDY_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert marker.is_file(), "the fault was not injected"
    assert "lost its worker" in proc.stdout and "restarting from its checkpoint of epoch 1" in proc.stdout

    runs = children(mlflow_uri, "e2e-kill")
    assert len(runs) == 2
    restarted = [r for r in runs if r.data.tags.get("fishtune.restarts") == "1"]
    assert len(restarted) == 1, [r.data.tags for r in runs]
    client = MlflowClient(mlflow_uri)
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["fishtune.outcome"] == "completed"
        fisher_steps = [m.step for m in client.get_metric_history(run.info.run_id, "fisher_trace")]
        assert sorted(fisher_steps) == list(range(0, 25, 4)), fisher_steps  # each step once, none missing
        val_steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert sorted(val_steps) == [8, 16, 24]
    assert [t.state for t in optuna_trials(storage, "e2e-kill")] == [optuna.trial.TrialState.COMPLETE] * 2
