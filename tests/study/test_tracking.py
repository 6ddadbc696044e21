"""The Tune → MLflow callback without Ray: Tune's events only enqueue writes (never I/O on
Tune's event loop), an epoch waits for its checkpoint, and the callback pickles."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mlflow.tracking import MlflowClient

from study.mlflow_study import TRIAL_ID
from study.mlflow_summary import write_primary
from study.tracking import MlflowTracking
from trainables.config import TrialConfig
from trainables.report import EpochReport, Outcome, Placement


class FakeTrial(SimpleNamespace):
    def __str__(self) -> str:
        return f"trainable_{self.trial_id}"


T0_MS = 1_700_000_000_000  # the trial's clock in these reports: step s was logged at T0_MS + 100 s


def a_trial(trial_id: str = "t1", lr: float = 0.0185, coef: float = 2.4e-4) -> Any:
    config = {**TrialConfig().flat(), "train.lr": lr, "penalty.coef": coef}
    return FakeTrial(
        trial_id=trial_id,
        config=config,
        evaluated_params={"train.lr": lr, "penalty.coef": coef},
        last_result={},
        run_metadata=SimpleNamespace(num_failures=1),
    )


def report(epoch: int, done: bool = False, checkpoint: bool = True, val_accuracy: float = 0.5) -> dict[str, Any]:
    step = 10 * epoch
    steps = range(step - 9, step + 1)
    result = EpochReport(
        epoch=epoch,
        step=step,
        metrics={"val_accuracy": val_accuracy, "val_loss": 1.0},
        curves={"fisher_trace": [(s, float(s)) for s in steps]},
        times={s: T0_MS + 100 * s for s in steps},
        outcome=Outcome.COMPLETED if done else Outcome.RUNNING,
    ).to_result(Placement(device="cpu", node_id="n1"))
    return {**result, "node_ip": "127.0.0.1", "should_checkpoint": checkpoint}


def run_trial(tracking: MlflowTracking, trial: Any, epochs: int, val_accuracy: float = 0.5) -> None:
    """The events Tune sends for a trial that reports ``epochs`` epochs, each with a checkpoint."""
    tracking.on_trial_start(0, [], trial)
    for epoch in range(1, epochs + 1):
        trial.last_result = report(epoch, done=epoch == epochs, val_accuracy=val_accuracy)
        tracking.on_trial_result(0, [], trial, trial.last_result)
        tracking.on_checkpoint(0, [], trial, checkpoint=None)
    tracking.on_trial_complete(0, [], trial)


def test_events_only_enqueue_while_the_store_hangs(black_hole: str) -> None:
    tracking = MlflowTracking(black_hole, "0", "parent")
    started = time.monotonic()
    run_trial(tracking, a_trial(), epochs=3)
    assert time.monotonic() - started < 1.0  # one blocked request alone would take 1 s
    kinds = [w.kind for w in tracking.pending]
    assert kinds[:3] == ["batch", "inputs", "status"] and kinds[-2:] == ["close", "summary"]
    assert [m.step for w in tracking.pending for m in w.metrics if m.key == "fisher_trace"] == list(range(1, 31))
    tracking.writes.close()


def test_an_epoch_waits_for_its_checkpoint_and_a_recovery_drops_it(black_hole: str) -> None:
    tracking, trial = MlflowTracking(black_hole, "0", "parent"), a_trial()
    tracking.on_trial_start(0, [], trial)
    queued = len(tracking.pending)
    tracking.on_trial_result(0, [], trial, report(1))
    assert len(tracking.pending) == queued  # held: Tune has not registered the checkpoint yet
    tracking.on_trial_recover(0, [], trial)  # the worker was lost: epoch 1 will be reported again
    tracking.on_checkpoint(0, [], trial, checkpoint=None)
    assert not any(w.metrics for w in tracking.pending)
    assert tracking.pending[-1].tags[0].key == "fishtune.restarts"
    tracking.writes.close()


def test_the_callback_pickles_while_its_writer_runs(black_hole: str) -> None:
    tracking = MlflowTracking(black_hole, "0", "parent")
    run_trial(tracking, a_trial(), epochs=1)
    copy = pickle.loads(pickle.dumps(tracking))
    assert [w.to_json() for w in copy.pending] == [w.to_json() for w in tracking.pending]
    tracking.writes.close()
    copy.writes.close()


def test_a_trial_reaches_its_child_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tracking", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, tags={"fishtune.searched": "train.lr,penalty.coef"}).info.run_id
    tracking = MlflowTracking(uri, exp, parent)
    run_trial(tracking, a_trial(), epochs=2)
    assert tracking.drain(timeout_s=30) == 0 and tracking.refused == 0
    [run] = client.search_runs([exp], filter_string=f"tags.`{TRIAL_ID}` = 't1'")
    assert run.info.run_name == "t001 lr=0.0185 coef=2.4e-4" and run.info.status == "FINISHED"
    assert run.data.tags["fishtune.outcome"] == "completed" and run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["mlflow.user"] and run.info.user_id == run.data.tags["mlflow.user"]
    assert run.data.params["train.lr"] == "0.0185"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [10, 20]
    points = client.get_metric_history(run.info.run_id, "fisher_trace")
    assert [m.step for m in points] == list(range(1, 21))
    assert [m.timestamp for m in points] == [T0_MS + 100 * m.step for m in points]  # the trial's clock
    assert {m.timestamp for m in client.get_metric_history(run.info.run_id, "val_accuracy")} == {
        T0_MS + 1000,
        T0_MS + 2000,
    }
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.name == "digits" and len(dataset.dataset.digest) == 36
    assert json.loads(dataset.dataset.profile) | {"train": 1294, "val": 144, "test": 359} == json.loads(
        dataset.dataset.profile
    )
    tracking.writes.close()


def test_the_parent_run_summarises_the_study_and_names_stay_unique(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("summary", artifact_location=(tmp_path / "artifacts").as_uri())
    tags = {"fishtune.role": "study", "fishtune.searched": "train.lr,penalty.coef"}
    parent = client.create_run(exp, tags=tags).info.run_id
    tracking = MlflowTracking(uri, exp, parent)
    run_trial(tracking, a_trial("a", lr=0.01), epochs=1, val_accuracy=0.6)
    assert tracking.drain(timeout_s=30) == 0  # the writer keeps up: one summary per finished trial
    run_trial(tracking, a_trial("b", lr=0.02), epochs=1, val_accuracy=0.9)
    assert tracking.drain(timeout_s=30) == 0
    diverged = a_trial("c", lr=0.5)
    tracking.on_trial_start(0, [], diverged)
    diverged.last_result = {**report(1, checkpoint=False, val_accuracy=0.99), "fishtune_outcome": "diverged"}
    tracking.on_trial_result(0, [], diverged, diverged.last_result)
    tracking.on_trial_start(0, [], a_trial("d", lr=0.02))  # same values as b, still running
    tracking.on_trial_complete(0, [], diverged)
    assert tracking.drain(timeout_s=30) == 0
    tracking.writes.close()

    names = {r.data.tags[TRIAL_ID]: r.info.run_name for r in client.search_runs([exp]) if TRIAL_ID in r.data.tags}
    assert names == {
        "a": "t001 lr=0.01 coef=2.4e-4",
        "b": "t002 lr=0.02 coef=2.4e-4",
        "c": "t003 lr=0.5 coef=2.4e-4",
        "d": "t004 lr=0.02 coef=2.4e-4",
    }
    run = client.get_run(parent)
    metrics, tags = run.data.metrics, run.data.tags
    assert metrics["trials_completed"] == 2 and metrics["trials_diverged"] == 1 and metrics["trials_running"] == 1
    assert metrics["trials_failed"] == 0 and metrics["best_val_accuracy"] == 0.9  # a diverged trial is not ranked
    assert tags["fishtune.best.trial_id"] == "b" and tags["fishtune.best.run"] == names["b"]
    assert tags["fishtune.best.train.lr"] == "0.02" and tags["fishtune.best.penalty.coef"] == "0.00024"
    assert tags["fishtune.outcomes"] == "completed 2, diverged 1, running 1"
    assert names["b"] in tags["mlflow.note.content"]
    assert [m.step for m in client.get_metric_history(parent, "best_val_accuracy")] == [1, 2, 3]

    write_primary(
        uri, "summary", {"measure": "m", "test": "t", "estimate": 0.5, "p": 0.01, "ci95": [0.1, 0.8]}, "ρ = 0.5"
    )
    run = client.get_run(parent)
    assert run.data.metrics["primary_estimate"] == 0.5 and run.data.metrics["primary_ci95_high"] == 0.8
    assert "primary_n_trials" not in run.data.metrics
    assert run.data.tags["fishtune.analysis.primary"] == "ρ = 0.5" and "ρ = 0.5" in run.data.tags["mlflow.note.content"]
