"""MLflow from the driver (design.md §4): one parent run per study, one child run per trial.

All MLflow I/O happens here, on the driver, through an explicit ``MlflowClient``: trials never
talk to the store (no SQLite migration races, no store reachability needed on workers). A
child run is looked up by its ``fishtune.trial_id`` tag before one is created, so retries,
restores and resumed studies continue the same run. Writes the store cannot take (unreachable)
wait in an ordered queue, retried on later events and drained at the end of the launch; what is
still unwritten then is kept on disk for the next launch. The user is told each time.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.experiment import Trial

from study.mlflow_study import MAX_PARAMS_PER_BATCH, OUTCOME, ROLE, TRIAL_ID
from trainables.config import TrialConfig
from trainables.report import Outcome, TrialResult, reported_outcome, step_metrics

log = logging.getLogger(__name__)

RETRY_PAUSE_S = 10.0
# MLflow error codes that retrying cannot fix (the request itself is refused, e.g. a param
# logged again with another value, or a run deleted by hand); anything else counts as an outage.
REFUSED_FOR_GOOD = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "BAD_REQUEST"})

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
MAX_ERROR_TAG_CHARS = 5000


def trial_outcome(trial: Trial, errored: bool) -> Outcome:
    """completed | early_stopped | diverged | failed, from the trial's last report."""
    if errored:
        return Outcome.FAILED
    last = reported_outcome(trial.last_result)
    if last in (Outcome.COMPLETED, Outcome.DIVERGED, Outcome.FAILED):
        return last
    return Outcome.EARLY_STOPPED  # stopped by the scheduler before its last epoch


@dataclass(slots=True)
class Write:
    """One store call for one trial's child run, queued until it succeeds.

    ``kind``: ``batch`` (one ``log_batch`` of params, metrics and tags), ``status`` (mark the run
    RUNNING) or ``close`` (snapshot ``curves.parquet``, then terminate the run with ``status``).
    Each is safe to repeat after a failure that left it half done.
    """

    trial_id: str
    kind: Literal["batch", "status", "close"]
    params: list[Param] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)
    tags: list[RunTag] = field(default_factory=list)
    status: str = ""

    def describe(self) -> str:
        keys = sorted({m.key for m in self.metrics} | {p.key for p in self.params} | {t.key for t in self.tags})
        return f"a {self.kind} write of trial {self.trial_id} (keys: {', '.join(keys)[:200] or 'none'})"

    def to_json(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "kind": self.kind,
            "params": [[p.key, p.value] for p in self.params],
            "metrics": [[m.key, m.value, m.timestamp, m.step] for m in self.metrics],
            "tags": [[t.key, t.value] for t in self.tags],
            "status": self.status,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Write:
        return cls(
            trial_id=d["trial_id"],
            kind=d["kind"],
            params=[Param(k, v) for k, v in d["params"]],
            metrics=[Metric(k, v, t, s) for k, v, t, s in d["metrics"]],
            tags=[RunTag(k, v) for k, v in d["tags"]],
            status=d["status"],
        )


class MlflowTracking(Callback):
    """Tune callback that writes every trial to its nested MLflow child run.

    Every store call goes through one ordered queue of :class:`Write`: when the store is
    unreachable, nothing is dropped or reordered; the queue is retried on each later event and
    drained at the end of the launch (:meth:`drain`), and the user is told both ways.

    An epoch's report is written only once Tune has registered its checkpoint: Tune calls
    ``on_trial_result`` before it asks the trial for the checkpoint, so a worker lost in
    between leaves Tune at the previous checkpoint, and the restarted trial reports that epoch
    again. Held until ``on_checkpoint``, the lost copy is dropped on recovery instead of being
    logged twice.
    """

    def __init__(self, tracking_uri: str, experiment: str, parent_run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial id → run id, for runs known to exist
        self._names: dict[str, str] = {}  # trial id → run name, to create the run when the store allows
        self._pending: list[Write] = []
        self._held: dict[str, list[Write]] = {}  # trial id → writes waiting for their checkpoint
        self._warned = False
        self._retry_at = 0.0  # monotonic time before which events do not retry a failed store
        self.refused = 0  # writes the store refused for good (logged, dropped)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the experiment state
        return {**self.__dict__, "_client": None}

    @property
    def pending(self) -> list[Write]:
        return list(self._pending)

    def run_id(self, trial_id: str) -> str:
        """The trial's child run: found by its ``fishtune.trial_id`` tag, else created."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        found = self.client.search_runs(
            [self.experiment], filter_string=f"tags.`{TRIAL_ID}` = '{trial_id}'", max_results=1
        )
        if found:
            run_id = found[0].info.run_id
        else:
            tags = {
                ROLE: "trial",
                TRIAL_ID: trial_id,
                OUTCOME: Outcome.RUNNING.value,
                "mlflow.parentRunId": self.parent_run_id,
            }
            run_id = self.client.create_run(
                self.experiment, run_name=self._names.get(trial_id, trial_id), tags=tags
            ).info.run_id
        self._runs[trial_id] = run_id
        return run_id

    def _register(self, trial: Trial) -> None:
        """First sight of a trial: queue its params (the run itself is created on the first write)."""
        if trial.trial_id in self._names:
            return
        self._names[trial.trial_id] = str(trial)
        params = [Param(k, str(v)) for k, v in TrialConfig.from_tune(trial.config).flat().items()]
        for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self._pending.append(Write(trial.trial_id, "batch", params=params[start : start + MAX_PARAMS_PER_BATCH]))

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._register(trial)
        self._pending.append(Write(trial.trial_id, "status", tags=[RunTag(OUTCOME, Outcome.RUNNING.value)]))
        self.flush()

    def on_checkpoint(self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: Any, **info: Any) -> None:
        self._release(trial.trial_id)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._held.pop(trial.trial_id, None)  # the restarted trial reports those epochs again
        restarts = trial.run_metadata.num_failures  # lost workers and transient errors so far
        self._pending.append(Write(trial.trial_id, "batch", tags=[RunTag("fishtune.restarts", str(restarts))]))
        self.flush()

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        self._register(trial)
        now = int(time.time() * 1000)
        reported = TrialResult.from_result(result)
        metrics = [
            Metric(name, float(value), now, int(step))
            for name, points in reported.curves.items()
            for step, value in points
        ]
        step = reported.step
        if not reported.repeats_older_values:
            metrics += [Metric(k, v, now, step) for k, v in reported.metrics.items()]
        metrics += [Metric(k, float(v), now, step) for k, v in reported.summary.items()]
        tags = [
            RunTag("fishtune.node", str(result.get("node_ip", ""))),  # Ray's key
            RunTag("fishtune.node_id", reported.placement.node_id),
            RunTag("fishtune.device", reported.placement.device),
        ]
        if reported.placement.device_note:
            tags.append(RunTag("fishtune.device_note", reported.placement.device_note))
        if reported.diverged_reason:
            tags.append(RunTag("fishtune.diverged_reason", reported.diverged_reason))
        writes = [Write(trial.trial_id, "batch", metrics=chunk) for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH)]
        writes.append(Write(trial.trial_id, "batch", tags=tags))
        if result.get("should_checkpoint"):  # Tune's flag: this report came with a checkpoint
            self._held.setdefault(trial.trial_id, []).extend(writes)
            return
        self._pending += writes
        self.flush()

    def _release(self, trial_id: str) -> None:
        self._pending += self._held.pop(trial_id, [])
        self.flush()

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, errored=True)

    def _finish(self, trial: Trial, errored: bool) -> None:
        self._register(trial)
        self._pending += self._held.pop(trial.trial_id, [])  # no restart will report them again
        outcome = trial_outcome(trial, errored)
        tags = [RunTag(OUTCOME, outcome.value)]
        if outcome is Outcome.FAILED:
            tags.append(RunTag("fishtune.error", error_summary(trial)[-MAX_ERROR_TAG_CHARS:]))
        status = RunStatus.FAILED if outcome is Outcome.FAILED else RunStatus.FINISHED
        self._pending.append(Write(trial.trial_id, "batch", tags=tags))
        self._pending.append(Write(trial.trial_id, "close", status=RunStatus.to_string(status)))
        self.flush()

    def _apply(self, write: Write) -> None:
        run_id = self.run_id(write.trial_id)
        if write.kind == "batch":
            self.client.log_batch(run_id, metrics=write.metrics, params=write.params, tags=write.tags)
        elif write.kind == "status":
            self.client.log_batch(run_id, tags=write.tags)
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        else:
            self._log_curves(run_id)
            self.client.set_terminated(run_id, status=write.status)

    def _log_curves(self, run_id: str) -> None:
        """All step-level curves of the run as one ``curves.parquet`` artifact (column per metric).

        MLflow 3 has no exact bulk read of metric histories; the analysis reads this file
        instead of one history call per metric and run, and falls back to them when it is absent.
        """
        columns = {}
        for name in step_metrics(self.client.get_run(run_id).data.metrics):
            history = self.client.get_metric_history(run_id, name)
            if history:
                columns[name] = pd.Series({m.step: m.value for m in history}, dtype=float)
        if not columns:
            return
        frame = pd.DataFrame(columns).sort_index().rename_axis("step").reset_index()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "curves.parquet"
            frame.to_parquet(path, index=False)
            self.client.log_artifact(run_id, str(path))

    def flush(self, force: bool = False) -> int:
        """Write what is queued, in order; return how many writes are still pending.

        After a failure, events within :data:`RETRY_PAUSE_S` do not retry (``force`` does): a
        server that does not answer would otherwise stall Tune's event loop on every event.
        A write the store refuses for good (e.g. a run deleted by hand) is dropped with an error
        naming it, so that it does not hold back every write behind it."""
        if not force and time.monotonic() < self._retry_at:
            return len(self._pending)
        while self._pending:
            try:
                self._apply(self._pending[0])
            except MlflowException as exc:
                if exc.error_code not in REFUSED_FOR_GOOD:
                    return self._unreachable(exc)
                write = self._pending.pop(0)
                self.refused += 1
                log.error("MLflow refused %s; it is not retried: %s", write.describe(), str(exc)[:300])
                continue
            except Exception as exc:  # the store is down: keep everything, retry later
                return self._unreachable(exc)
            self._pending.pop(0)
        if self._warned:
            log.warning("MLflow store reachable again; every buffered write is stored")
            self._warned = False
        return 0

    def _unreachable(self, exc: Exception) -> int:
        self._retry_at = time.monotonic() + RETRY_PAUSE_S
        if not self._warned:
            log.warning(
                "MLflow store %s unreachable (%s: %s); buffering %d write(s) and retrying",
                self.tracking_uri,
                type(exc).__name__,
                str(exc)[:200],
                len(self._pending),
            )
            self._warned = True
        return len(self._pending)

    def drain(self, timeout_s: float, poll_s: float = 2.0) -> int:
        """Retry the queue until it is empty or ``timeout_s`` passed; return what is left."""
        deadline = time.monotonic() + timeout_s
        left = self.flush(force=True)
        if left:
            log.warning("waiting up to %.0f s for the MLflow store to take %d buffered write(s)", timeout_s, left)
        while left and time.monotonic() < deadline:
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
            left = self.flush(force=True)
        return left

    def save_pending(self, path: Path) -> None:
        """Keep what the store never took in ``path`` (JSON lines) for :meth:`replay`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            for write in self._pending:
                name = {write.trial_id: self._names.get(write.trial_id, write.trial_id)}
                f.write(json.dumps({"runs": name, "write": write.to_json()}) + "\n")
        self._pending.clear()

    def replay(self, path: Path) -> int:
        """Queue the writes saved in ``path`` by an earlier launch, write them; the file is
        removed once all of them are stored. Returns how many are still pending."""
        if not path.is_file():
            return 0
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            self._names.update(entry["runs"])
            self._pending.append(Write.from_json(entry["write"]))
        left = self.flush(force=True)
        if not left:
            path.unlink()
        return left


def _chunks(items: list[Metric], size: int) -> Iterable[list[Metric]]:
    return (items[i : i + size] for i in range(0, len(items), size))


def error_summary(trial: Trial) -> str:
    """The trial's own error text (last traceback lines) and where it ran."""
    text = TrialResult.from_result(trial.last_result).error  # a failure the trainable reported
    if not text:
        error = trial.get_error() if hasattr(trial, "get_error") else None
        text = str(error) if error is not None else "unknown error"
    node = trial.last_result.get("node_ip") or "unknown node"
    return f"{text.strip()}\n(on node {node})"
