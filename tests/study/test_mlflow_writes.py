"""How the writer stores one trial's writes (study.mlflow_writes.ChildRuns): on a SQLite store,
the calls it spares MLflow change nothing that MLflow would have stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from study.mlflow_writes import ChildRuns, Write
from study.sqlite_rows import SqliteRows


class CountingClient(MlflowClient):
    """An MlflowClient that counts the calls the writer makes through it."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.calls: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name in ("log_batch", "update_run", "search_runs", "create_run", "set_terminated"):
            self.calls.append(name)
        return attr


def trial_writes(trial: str) -> list[Write]:
    return [
        Write(trial, "batch", params=[Param("train.lr", "0.02")]),
        Write(trial, "status", tags=[RunTag("fishtune.outcome", "running")]),
        Write(trial, "batch", metrics=[Metric("val_accuracy", 0.5, 1000, 1)], tags=[RunTag("fishtune.node", "n")]),
    ]


def test_a_new_trial_on_a_sqlite_store_costs_mlflow_one_call_and_stores_the_same(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    plain = MlflowClient(uri)
    exp = plain.create_experiment("w", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = plain.create_run(exp).info.run_id
    counted, rows = CountingClient(uri), SqliteRows.open(uri)
    assert rows is not None
    fast, slow = ChildRuns(counted, exp, parent, rows), ChildRuns(MlflowClient(uri), exp, parent)
    for trial, runs in (("first", fast), ("fast", fast), ("slow", slow)):
        if trial == "fast":
            counted.calls.clear()  # the first counted the experiment's trial runs once (a search)
        for write in trial_writes(trial):
            runs.apply(write, trial)
    assert counted.calls == ["create_run"]  # no search by tag, params, status nor points through MLflow

    def stored(trial: str) -> tuple:
        run = plain.get_run(fast.run_id(trial, trial) if trial == "fast" else slow.run_id(trial, trial))
        tags = {k: v for k, v in run.data.tags.items() if k not in ("fishtune.trial_id", "mlflow.runName")}
        return run.info.status, run.data.params, run.data.metrics, tags

    assert stored("fast") == stored("slow")

    # Closed, then started again (Tune retries a failed trial): the status write is stored.
    fast.apply(Write("fast", "batch", tags=[RunTag("fishtune.outcome", "failed")]), "fast")
    fast.apply(Write("fast", "close", status=RunStatus.to_string(RunStatus.FAILED)), "fast")
    fast.apply(Write("fast", "status", tags=[RunTag("fishtune.outcome", "running")]), "fast")
    rows.close()
    run = plain.get_run(fast.run_id("fast", "fast"))
    assert run.info.status == "RUNNING" and run.data.tags["fishtune.outcome"] == "running"
