"""What the driver writes to a trial's MLflow child run, and how one write is stored.

A :class:`Write` is one store call; :class:`ChildRuns` performs it on the trial's child run,
found by its ``fishtune.trial_id`` tag or created (nested under the study's parent run). Each
write is safe to repeat: MLflow keeps one copy of an identical metric point, param or tag, so a
request that timed out but did land, then written again, stores nothing twice. Ordering,
retries and keeping writes on disk are :mod:`study.write_queue`'s.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import pandas as pd
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from study.mlflow_dataset import dataset_record
from study.mlflow_study import MAX_PARAMS_PER_BATCH, OUTCOME, ROLE, TRIAL_ID, run_name, system_tags
from study.mlflow_summary import trial_runs, write_summary
from study.sqlite_rows import SqliteRows
from trainables.config import DataConfig
from trainables.report import Outcome, step_metrics
from trainables.schema import ConfigError

T = TypeVar("T")
log = logging.getLogger(__name__)

# MLflow error codes that retrying cannot fix (the request itself is refused, e.g. a param
# logged again with another value, or a run deleted by hand); anything else counts as an outage.
REFUSED_FOR_GOOD = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "BAD_REQUEST"})
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limits
MAX_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000  # params, metrics and tags together


@dataclass(slots=True)
class Write:
    """One store call for one trial's child run, queued until it succeeds.

    ``kind``: ``batch`` (one ``log_batch`` of params, metrics and tags), ``status`` (mark the run
    RUNNING), ``inputs`` (log the data set of the trial's ``data`` config as the run's dataset
    input; described here, off Tune's event loop, as it may read the data set), ``close`` (snapshot
    ``curves.parquet``, then terminate the run with ``status``) or ``summary`` (rewrite the
    study's summary on the parent run, ``study.mlflow_summary``). Each is safe to repeat after a
    failure that left it half done.
    """

    trial_id: str
    kind: Literal["batch", "status", "inputs", "close", "summary"]
    params: list[Param] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)
    tags: list[RunTag] = field(default_factory=list)
    status: str = ""
    data: dict[str, Any] = field(default_factory=dict)  # the trial's data.* config, for ``inputs``

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
            "data": self.data,
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
            data=d.get("data", {}),
        )


def batches(
    trial_id: str, *, params: Sequence[Param] = (), metrics: Sequence[Metric] = (), tags: Sequence[RunTag] = ()
) -> list[Write]:
    """``batch`` writes within MLflow's per-call limits: the params, then the metrics, then the tags."""
    return (
        [Write(trial_id, "batch", params=chunk) for chunk in _chunks(params, MAX_PARAMS_PER_BATCH)]
        + [Write(trial_id, "batch", metrics=chunk) for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH)]
        + [Write(trial_id, "batch", tags=chunk) for chunk in _chunks(tags, MAX_TAGS_PER_BATCH)]
    )


def _chunks(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def fits_with(batch: tuple[int, int, int], write: Write) -> bool:
    """Whether ``write``, a ``batch`` write, still fits into one ``log_batch`` beside ``batch``
    (its params, metrics and tags counted), within MLflow's per-call limits."""
    params, metrics, tags = batch[0] + len(write.params), batch[1] + len(write.metrics), batch[2] + len(write.tags)
    return (
        params <= MAX_PARAMS_PER_BATCH
        and metrics <= MAX_METRICS_PER_BATCH
        and tags <= MAX_TAGS_PER_BATCH
        and params + metrics + tags <= MAX_ENTITIES_PER_BATCH
    )


def merged(writes: Sequence[Write]) -> Write:
    """One ``batch`` write that stores what the ``batch`` writes ``writes`` of one trial store,
    in order: repeated params and metric points once, a tag set twice at its last value (MLflow
    refuses repeated param keys in one call; a param logged twice with two values is still
    refused, as it would be alone)."""
    params = list(dict.fromkeys((p.key, p.value) for w in writes for p in w.params))
    metrics = list(dict.fromkeys((m.key, m.value, m.timestamp, m.step) for w in writes for m in w.metrics))
    tags = {t.key: t.value for w in writes for t in w.tags}
    return Write(
        writes[0].trial_id,
        "batch",
        params=[Param(k, v) for k, v in params],
        metrics=[Metric(k, v, t, s) for k, v, t, s in metrics],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )


class ChildRuns:
    """The study's child runs in one experiment of the store, one per trial id.

    A run created here is named :func:`~study.mlflow_study.run_name`: ``t<n>`` (its place among
    the study's trial runs, counted in the store once, then here; one writer creates them), then
    the label the callback gave.
    """

    def __init__(
        self, client: MlflowClient, experiment: str, parent_run_id: str, rows: SqliteRows | None = None
    ) -> None:
        self.client = client
        self.rows = rows  # a local SQLite store's tables: points and tags written without MLflow's ORM
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self._runs: dict[str, str] = {}  # trial id → run id, for runs known to exist
        # Runs created here as RUNNING with outcome ``running``, not closed nor given another
        # outcome since: a ``status`` write (which sets just that) has nothing to change on them.
        self._fresh: set[str] = set()
        self._created: int | None = None  # trial runs in the experiment, once counted
        self._system_tags = system_tags()  # mlflow.user, mlflow.source.*: given at creation, as MLflow does

    def run_id(self, trial_id: str, label: str) -> str:
        """The trial's child run: found by its ``fishtune.trial_id`` tag, else created, named after ``label``."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        found = self._find(trial_id)
        if found is not None:
            run_id = found
            self._created = None  # maybe created by a request that seemed to fail: count again
        else:
            tags = {
                ROLE: "trial",
                TRIAL_ID: trial_id,
                OUTCOME: Outcome.RUNNING.value,
                "mlflow.parentRunId": self.parent_run_id,
                **self._system_tags,
            }
            if self._created is None:
                self._created = len(trial_runs(self.client, self.experiment))
            name = run_name(self._created + 1, label)
            run_id = self.client.create_run(self.experiment, run_name=name, tags=tags).info.run_id
            self._created += 1
            self._fresh.add(run_id)
        self._runs[trial_id] = run_id
        return run_id

    def _find(self, trial_id: str) -> str | None:
        if self.rows is not None:
            return self.rows.find_run(self.experiment, TRIAL_ID, trial_id)
        found = self.client.search_runs(
            [self.experiment], filter_string=f"tags.`{TRIAL_ID}` = '{trial_id}'", max_results=1
        )
        return found[0].info.run_id if found else None

    def apply(self, write: Write, label: str) -> None:
        """Store ``write``; raises what the client raises."""
        # synchronous=True: with MLFLOW_ENABLE_ASYNC_LOGGING set, log_batch would return at once
        # and MLflow's own thread would drop a batch the store fails, counted here as stored.
        if write.kind == "summary":
            write_summary(self.client, self.experiment, self.parent_run_id)
            return
        run_id = self.run_id(write.trial_id, label)
        if write.kind == "batch":
            if any(t.key == OUTCOME for t in write.tags):
                self._fresh.discard(run_id)
            if self._logged_as_rows(run_id, write):
                return
            self.client.log_batch(run_id, metrics=write.metrics, params=write.params, tags=write.tags, synchronous=True)
        elif write.kind == "status":
            if run_id in self._fresh:
                return
            self.client.log_batch(run_id, tags=write.tags, synchronous=True)
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        elif write.kind == "inputs":
            try:
                dataset = dataset_record(DataConfig(**write.data)).to_input()
            except ConfigError as exc:  # the data set went away since the launch checked it: not the store's fault
                log.error("trial %s: its data set is not logged as a dataset input: %s", write.trial_id, exc)
                return
            self.client.log_inputs(run_id, datasets=[dataset])
        else:
            self._fresh.discard(run_id)
            self._log_curves(run_id)
            self.client.set_terminated(run_id, status=write.status)

    def _histories(self, run_id: str) -> dict[str, dict[int, float]]:
        """The run's step metrics (:func:`~trainables.report.step_metrics` order): step → value."""
        if self.rows is not None:  # one query instead of one history call per metric
            found = self.rows.histories(run_id)
            return {name: found[name] for name in step_metrics(found)}
        names = step_metrics(self.client.get_run(run_id).data.metrics)
        return {name: {m.step: m.value for m in self.client.get_metric_history(run_id, name)} for name in names}

    def _logged_as_rows(self, run_id: str, write: Write) -> bool:
        """Whether :attr:`rows` stored the ``batch`` write (on an active run, no param changed)."""
        if self.rows is None or not SqliteRows.takes(write.metrics, write.tags, write.params):
            return False
        return self.rows.log(run_id, write.metrics, write.tags, write.params)

    def _log_curves(self, run_id: str) -> None:
        """All step-level curves of the run as one ``curves.parquet`` artifact (column per metric).

        MLflow 3 has no exact bulk read of metric histories; the analysis reads this file
        instead of one history call per metric and run, and falls back to them when it is absent.
        """
        columns = {name: pd.Series(points, dtype=float) for name, points in self._histories(run_id).items() if points}
        if not columns:
            return
        frame = pd.DataFrame(columns).sort_index().rename_axis("step").reset_index()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "curves.parquet"
            frame.to_parquet(path, index=False)
            self.client.log_artifact(run_id, str(path))
