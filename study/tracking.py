"""MLflow from the driver (design.md §4): one parent run per study, one child run per trial.

All MLflow I/O happens here, on the driver, through an explicit ``MlflowClient``: trials never
talk to the store (no SQLite migration races, no store reachability needed on workers). A
child run is looked up by its ``fishtune.trial_id`` tag before one is created, so retries,
restores and resumed studies continue the same run. The callback only maps Tune's events to
writes (``study.mlflow_writes``) and enqueues them (``study.write_queue``): a background thread stores them in order,
so a store that is down or hangs never stalls Tune's event loop; what is still unwritten at the
end of the launch is kept on disk for the next launch. The user is told each time.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from ray.tune import Callback
from ray.tune.experiment import Trial

from study.mlflow_study import OUTCOME, run_label
from study.mlflow_writes import Write, batches
from study.write_queue import REPLAY_WAIT_S, WriteQueue
from trainables.config import SEEDS_KEY, TRIAL_INDEX_KEY, TrialConfig
from trainables.report import Outcome, TrialResult, reported_outcome

MAX_ERROR_TAG_CHARS = 5000


def trial_outcome(trial: Trial, errored: bool) -> Outcome:
    """completed | early_stopped | diverged | failed, from the trial's last report."""
    if errored:
        return Outcome.FAILED
    last = reported_outcome(trial.last_result)
    if last in (Outcome.COMPLETED, Outcome.DIVERGED, Outcome.FAILED):
        return last
    return Outcome.EARLY_STOPPED  # stopped by the scheduler before its last epoch


class MlflowTracking(Callback):
    """Tune callback that writes every trial to its nested MLflow child run.

    Every store call is a :class:`~study.mlflow_writes.Write` put on one ordered
    :class:`~study.write_queue.WriteQueue` (:attr:`writes`): the events only enqueue, and
    nothing is dropped or reordered while the store is away. At the end of the launch the queue
    is drained (:meth:`drain`) and what is left is kept on disk (:meth:`save_pending`).

    An epoch's report is written only once Tune has registered its checkpoint: Tune calls
    ``on_trial_result`` before it asks the trial for the checkpoint, so a worker lost in
    between leaves Tune at the previous checkpoint, and the restarted trial reports that epoch
    again. Held until ``on_checkpoint``, the lost copy is dropped on recovery instead of being
    logged twice.

    A trial's run is named after its searched values (:func:`trial_label`); its points carry the
    time the trial logged them (``TrialResult.times``); each finished trial rewrites the study's
    summary on the parent run (a ``summary`` write, after the trial's own).
    """

    def __init__(self, tracking_uri: str, experiment: str, parent_run_id: str) -> None:
        self.writes = WriteQueue(tracking_uri, experiment, parent_run_id)
        self._seen: set[str] = set()  # trials whose params are queued
        self._held: dict[str, list[Write]] = {}  # trial id → writes waiting for their checkpoint

    @property
    def pending(self) -> list[Write]:
        return self.writes.pending

    @property
    def refused(self) -> int:
        return self.writes.refused

    def drain(self, timeout_s: float) -> int:
        return self.writes.drain(timeout_s)

    def save_pending(self, path: Path) -> None:
        self.writes.spill(path)

    def replay(self, path: Path, timeout_s: float = REPLAY_WAIT_S) -> int:
        return self.writes.replay(path, timeout_s)

    def _register(self, trial: Trial) -> None:
        """First sight of a trial: queue its params (the run itself is created on the first write)."""
        if trial.trial_id in self._seen:
            return
        self._seen.add(trial.trial_id)
        self.writes.name_run(trial.trial_id, trial_label(trial))
        config = TrialConfig.from_tune(trial.config)
        params = [Param(k, str(v)) for k, v in config.flat().items()]
        self.writes.put(
            *batches(trial.trial_id, params=params),
            Write(trial.trial_id, "inputs", data=dataclasses.asdict(config.data)),
        )

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._register(trial)
        self.writes.put(Write(trial.trial_id, "status", tags=[RunTag(OUTCOME, Outcome.RUNNING.value)]))

    def on_checkpoint(self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: Any, **info: Any) -> None:
        self.writes.put(*self._held.pop(trial.trial_id, []))

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._held.pop(trial.trial_id, None)  # the restarted trial reports those epochs again
        restarts = trial.run_metadata.num_failures  # lost workers and transient errors so far
        self.writes.put(Write(trial.trial_id, "batch", tags=[RunTag("fishtune.restarts", str(restarts))]))

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        self._register(trial)
        reported = TrialResult.from_result(result)
        times = reported.times  # the trial's clock; a point it did not time gets the driver's
        now = int(time.time() * 1000)
        metrics = [
            Metric(name, float(value), times.get(int(step), now), int(step))
            for name, points in reported.curves.items()
            for step, value in points
        ]
        step = reported.step
        at = times.get(step, max(times.values(), default=now))
        if not reported.repeats_older_values:
            metrics += [Metric(k, v, at, step) for k, v in reported.metrics.items()]
        metrics += [Metric(k, float(v), at, step) for k, v in reported.summary.items()]
        tags = [
            RunTag("fishtune.node", str(result.get("node_ip", ""))),  # Ray's key
            RunTag("fishtune.node_id", reported.placement.node_id),
            RunTag("fishtune.device", reported.placement.device),
        ]
        if reported.placement.device_note:
            tags.append(RunTag("fishtune.device_note", reported.placement.device_note))
        if reported.diverged_reason:
            tags.append(RunTag("fishtune.diverged_reason", reported.diverged_reason))
        writes = batches(trial.trial_id, metrics=metrics, tags=tags)
        if result.get("should_checkpoint"):  # Tune's flag: this report came with a checkpoint
            self._held.setdefault(trial.trial_id, []).extend(writes)
            return
        self.writes.put(*writes)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, errored=True)

    def _finish(self, trial: Trial, errored: bool) -> None:
        self._register(trial)
        held = self._held.pop(trial.trial_id, [])  # no restart will report them again
        outcome = trial_outcome(trial, errored)
        tags = [RunTag(OUTCOME, outcome.value)]
        if outcome is Outcome.FAILED:
            tags.append(RunTag("fishtune.error", error_summary(trial)[-MAX_ERROR_TAG_CHARS:]))
        status = RunStatus.FAILED if outcome is Outcome.FAILED else RunStatus.FINISHED
        close = Write(trial.trial_id, "close", status=RunStatus.to_string(status))
        summary = Write(trial.trial_id, "summary")
        self.writes.put(*held, Write(trial.trial_id, "batch", tags=tags), close, summary)


def trial_label(trial: Trial) -> str:
    """The trial's searched values (``lr=0.0185 coef=2.4e-4``), and its seed when seeds are replicated."""
    searched = {k: v for k, v in trial.evaluated_params.items() if k != TRIAL_INDEX_KEY}
    if SEEDS_KEY in trial.config:
        searched["train.seed"] = TrialConfig.from_tune(trial.config).train.seed
    return run_label(searched)


def error_summary(trial: Trial) -> str:
    """The trial's own error text (last traceback lines) and where it ran."""
    text = TrialResult.from_result(trial.last_result).error  # a failure the trainable reported
    if not text:
        error = trial.get_error() if hasattr(trial, "get_error") else None
        text = str(error) if error is not None else "unknown error"
    node = trial.last_result.get("node_ip") or "unknown node"
    return f"{text.strip()}\n(on node {node})"
