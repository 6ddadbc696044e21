"""MLflow from the driver (design.md §4): one parent run per study, one child run per trial.

All MLflow I/O happens here, on the driver, through an explicit ``MlflowClient``: trials never
talk to the store (no SQLite migration races, no store reachability needed on workers). A
child run is looked up by its ``fishtune.trial_id`` tag before one is created, so retries,
restores and resumed studies continue the same run. Metrics that cannot be written (store
unreachable) are buffered and retried on the next write, and the user is told.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.experiment import Trial

from study.spec import StudySpec
from trainables.config import TrialConfig

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
MAX_PARAMS_PER_BATCH = 100
EPOCH_METRICS = ("val_accuracy", "val_loss", "test_accuracy", "test_loss")
CURVE_METRICS = (
    "epoch",
    "train_loss",
    "penalty_loss",
    "train_accuracy",
    "fisher_trace",
    "fisher_trace_stderr",
    "fisher_trace_batch",
    "fisher_trace_empirical",
)
ROLE, TRIAL_ID, OUTCOME = "fishtune.role", "fishtune.trial_id", "fishtune.outcome"


def trial_outcome(trial: Trial, errored: bool) -> str:
    """completed | early_stopped | diverged | failed, from the trial's last report."""
    if errored:
        return "failed"
    last = trial.last_result.get("fishtune_outcome")
    if last in ("completed", "diverged"):
        return last
    return "early_stopped"  # stopped by the scheduler before its last epoch


def experiment_id(client: MlflowClient, spec: StudySpec) -> str:
    exp = client.get_experiment_by_name(spec.name)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if spec.tracking.uri.startswith("sqlite:///"):  # keep artifacts beside the database, not in cwd
        artifacts = (Path(spec.tracking.uri.removeprefix("sqlite:///")).parent / "mlartifacts" / spec.name).as_uri()
    return client.create_experiment(spec.name, artifact_location=artifacts)


def parent_run(client: MlflowClient, spec: StudySpec, versions: dict[str, str]) -> str:
    """The study's parent run id; created once with the resolved, flattened spec as params."""
    exp = experiment_id(client, spec)
    found = client.search_runs([exp], filter_string=f"tags.`{ROLE}` = 'study'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(
        exp, run_name=spec.name, tags={ROLE: "study", "fishtune.searched": ",".join(spec.search.space)}
    )
    run_id = run.info.run_id
    flat = _flatten_yaml(spec.to_yaml_dict())
    params = [Param(k, str(v)) for k, v in flat.items()]
    for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[start : start + MAX_PARAMS_PER_BATCH])
    client.log_batch(run_id, tags=[RunTag(f"fishtune.version.{k}", v) for k, v in versions.items()])
    client.log_dict(run_id, spec.to_yaml_dict(), "spec.yaml")
    return run_id


def _flatten_yaml(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if name == "search.space":
            out.update({f"{name}.{field}": json.dumps(domain) for field, domain in value.items()})
        elif isinstance(value, dict):
            out.update(_flatten_yaml(value, f"{name}."))
        else:
            out[name] = value
    return out


class MlflowTracking(Callback):
    """Tune callback that writes every trial to its nested MLflow child run."""

    def __init__(self, tracking_uri: str, experiment: str, parent_run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}
        self._pending: list[tuple[str, list[Metric], list[RunTag]]] = []
        self._warned = False

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the experiment state
        return {**self.__dict__, "_client": None}

    def run_id(self, trial: Trial) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        found = self.client.search_runs(
            [self.experiment], filter_string=f"tags.`{TRIAL_ID}` = '{trial.trial_id}'", max_results=1
        )
        if found:
            run_id = found[0].info.run_id
        else:
            config = TrialConfig.from_tune(trial.config)
            run = self.client.create_run(
                self.experiment,
                run_name=str(trial),
                tags={
                    ROLE: "trial",
                    TRIAL_ID: trial.trial_id,
                    OUTCOME: "running",
                    "mlflow.parentRunId": self.parent_run_id,
                },
            )
            run_id = run.info.run_id
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in config.flat().items()])
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        run_id = self.run_id(trial)
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        self.client.set_tag(run_id, OUTCOME, "running")

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        now = int(time.time() * 1000)
        metrics = [
            Metric(name, float(value), now, int(step))
            for name, points in result.get("curves", {}).items()
            for step, value in points
        ]
        step = int(result["step"])
        if result.get("fishtune_outcome") != "diverged":  # a diverged report repeats an older epoch's values
            metrics += [Metric(k, float(result[k]), now, step) for k in EPOCH_METRICS if k in result]
        metrics += [Metric(k, float(v), now, step) for k, v in result.get("summary", {}).items()]
        tags = [
            RunTag("fishtune.node", str(result.get("node_ip", ""))),
            RunTag("fishtune.device", str(result.get("fishtune_device", ""))),
        ]
        if result.get("fishtune_device_note"):
            tags.append(RunTag("fishtune.device_note", result["fishtune_device_note"]))
        if result.get("fishtune_diverged_reason"):
            tags.append(RunTag("fishtune.diverged_reason", result["fishtune_diverged_reason"]))
        self._write(self.run_id(trial), metrics, tags)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, errored=True)

    def _finish(self, trial: Trial, errored: bool) -> None:
        run_id = self.run_id(trial)
        tags = [RunTag(OUTCOME, trial_outcome(trial, errored))]
        if errored:
            tags.append(RunTag("fishtune.error", error_summary(trial)[-5000:]))
        self._write(run_id, [], tags)
        if self.flush() == 0:  # every point is in the store: snapshot the curves, close the run
            self._log_curves(run_id)
            status = RunStatus.FAILED if errored else RunStatus.FINISHED
            self.client.set_terminated(run_id, status=RunStatus.to_string(status))

    def _log_curves(self, run_id: str) -> None:
        """All step-level curves of the run as one ``curves.parquet`` artifact (column per metric).

        MLflow 3 has no exact bulk read of metric histories; the analysis reads this file
        instead of one history call per metric and run, and falls back to them when it is absent.
        """
        columns = {}
        for name in CURVE_METRICS:
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

    def _write(self, run_id: str, metrics: list[Metric], tags: list[RunTag]) -> None:
        self._pending += [(run_id, chunk, []) for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH)]
        if tags:
            self._pending.append((run_id, [], tags))
        self.flush()

    def flush(self) -> int:
        """Write what is buffered, in order; return how many batches are still unwritten."""
        while self._pending:
            run_id, metrics, tags = self._pending[0]
            try:
                self.client.log_batch(run_id, metrics=metrics, tags=tags)
            except Exception as exc:  # the store is down: keep everything, retry on the next write
                if not self._warned:
                    log.warning(
                        "MLflow store %s unreachable (%s); buffering metrics and retrying", self.tracking_uri, exc
                    )
                    self._warned = True
                return len(self._pending)
            self._pending.pop(0)
            if self._warned:
                log.warning("MLflow store reachable again; buffered metrics written")
                self._warned = False
        return 0


def _chunks(items: list[Metric], size: int) -> Iterable[list[Metric]]:
    return (items[i : i + size] for i in range(0, len(items), size))


def error_summary(trial: Trial) -> str:
    """The trial's own error text (last traceback lines) and where it ran."""
    error = trial.get_error() if hasattr(trial, "get_error") else None
    text = str(error) if error is not None else "unknown error"
    node = trial.last_result.get("node_ip") or "unknown node"
    return f"{text.strip()}\n(on node {node})"
