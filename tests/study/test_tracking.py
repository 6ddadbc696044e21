"""The Tune → MLflow callback without Ray: Tune's events only enqueue writes (never I/O on
Tune's event loop), an epoch waits for its checkpoint, and the callback pickles."""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mlflow.tracking import MlflowClient

from study.mlflow_study import TRIAL_ID
from study.tracking import MlflowTracking
from trainables.config import TrialConfig
from trainables.report import EpochReport, Outcome, Placement


class FakeTrial(SimpleNamespace):
    def __str__(self) -> str:
        return f"trainable_{self.trial_id}"


def a_trial(trial_id: str = "t1") -> Any:
    return FakeTrial(
        trial_id=trial_id, config=TrialConfig().flat(), last_result={}, run_metadata=SimpleNamespace(num_failures=1)
    )


def report(epoch: int, done: bool = False, checkpoint: bool = True) -> dict[str, Any]:
    step = 10 * epoch
    result = EpochReport(
        epoch=epoch,
        step=step,
        metrics={"val_accuracy": 0.5, "val_loss": 1.0},
        curves={"fisher_trace": [(s, float(s)) for s in range(step - 10, step)]},
        outcome=Outcome.COMPLETED if done else Outcome.RUNNING,
    ).to_result(Placement(device="cpu", node_id="n1"))
    return {**result, "node_ip": "127.0.0.1", "should_checkpoint": checkpoint}


def run_trial(tracking: MlflowTracking, trial: Any, epochs: int) -> None:
    """The events Tune sends for a trial that reports ``epochs`` epochs, each with a checkpoint."""
    tracking.on_trial_start(0, [], trial)
    for epoch in range(1, epochs + 1):
        trial.last_result = report(epoch, done=epoch == epochs)
        tracking.on_trial_result(0, [], trial, trial.last_result)
        tracking.on_checkpoint(0, [], trial, checkpoint=None)
    tracking.on_trial_complete(0, [], trial)


def test_events_only_enqueue_while_the_store_hangs(black_hole: str) -> None:
    tracking = MlflowTracking(black_hole, "0", "parent")
    started = time.monotonic()
    run_trial(tracking, a_trial(), epochs=3)
    assert time.monotonic() - started < 1.0  # one blocked request alone would take 1 s
    kinds = [w.kind for w in tracking.pending]
    assert kinds[0] == "batch" and kinds[1] == "status" and kinds[-1] == "close"
    assert [m.step for w in tracking.pending for m in w.metrics if m.key == "fisher_trace"] == list(range(30))
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
    exp = client.create_experiment("tracking")
    parent = client.create_run(exp).info.run_id
    tracking = MlflowTracking(uri, exp, parent)
    run_trial(tracking, a_trial(), epochs=2)
    assert tracking.drain(timeout_s=30) == 0 and tracking.refused == 0
    [run] = client.search_runs([exp], filter_string=f"tags.`{TRIAL_ID}` = 't1'")
    assert run.info.run_name == "trainable_t1" and run.info.status == "FINISHED"
    assert run.data.tags["fishtune.outcome"] == "completed" and run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params["train.lr"] == str(TrialConfig().train.lr)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [10, 20]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "fisher_trace")] == list(range(20))
    tracking.writes.close()
