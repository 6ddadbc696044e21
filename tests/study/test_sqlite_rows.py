"""Points and tags written straight into a SQLite MLflow store read back as MLflow's own writes do."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from study.sqlite_rows import SqliteRows

# Two reports' worth of points in the order a merged write holds them: a repeated point, a step
# logged out of order, a later point with a smaller value at the same step, NaN and ±inf.
BATCHES = [
    (
        [
            *(Metric("loss", 0.9, 1000, 0), Metric("loss", 0.7, 1001, 2), Metric("loss", 0.8, 1002, 1)),
            *(Metric("loss", 0.7, 1001, 2), Metric("trF", float("nan"), 1000, 0), Metric("trF", float("inf"), 1001, 1)),
        ],
        [RunTag("fishtune.node", "n1"), RunTag("fishtune.device", "cpu")],
    ),
    (
        [
            *(
                Metric("loss", 0.5, 1003, 2),
                Metric("trF", float("-inf"), 1003, 3),
                Metric("trF", float("nan"), 1004, 4),
            ),
            Metric("loss", 0.6, 1005, 1),  # the last point written is not the latest
        ],
        [RunTag("fishtune.node", "n2")],
    ),
]


def read_back(client: MlflowClient, run_id: str) -> tuple:
    run = client.get_run(run_id)
    histories = {
        key: sorted((m.step, m.timestamp, str(m.value)) for m in client.get_metric_history(run_id, key))
        for key in ("loss", "trF")
    }
    latest = {k: str(v) for k, v in run.data.metrics.items()}
    tags = {k: v for k, v in run.data.tags.items() if k.startswith("fishtune.")}
    return histories, latest, tags


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, MlflowClient, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    return uri, client, client.create_experiment("rows")


def test_rows_read_back_as_mlflows_own_log_batch(store: tuple[str, MlflowClient, str]) -> None:
    uri, client, exp = store
    by_mlflow, by_rows = client.create_run(exp).info.run_id, client.create_run(exp).info.run_id
    rows = SqliteRows.open(uri)
    assert rows is not None
    for metrics, tags in BATCHES + BATCHES:  # each batch twice: a repeated write stores nothing twice
        assert SqliteRows.takes(metrics, tags)
        client.log_batch(by_mlflow, metrics=metrics, tags=tags, synchronous=True)
        assert rows.log(by_rows, metrics, tags)
    rows.close()
    assert read_back(client, by_rows) == read_back(client, by_mlflow)
    assert read_back(client, by_rows)[1] == {"loss": "0.5", "trF": "nan"}


def test_histories_read_back_as_mlflows_metric_history(store: tuple[str, MlflowClient, str]) -> None:
    uri, client, exp = store
    run_id = client.create_run(exp).info.run_id
    for metrics, tags in BATCHES:
        client.log_batch(run_id, metrics=metrics, tags=tags, synchronous=True)
    rows = SqliteRows.open(uri)
    assert rows is not None
    found = rows.histories(run_id)
    rows.close()
    by_mlflow = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)} for key in ("loss", "trF")}
    assert repr(dict(sorted(found.items()))) == repr(by_mlflow)  # repr: NaN == NaN


def test_a_run_that_is_not_active_gets_nothing(store: tuple[str, MlflowClient, str]) -> None:
    uri, client, exp = store
    run_id = client.create_run(exp).info.run_id
    client.delete_run(run_id)
    rows = SqliteRows.open(uri)
    assert rows is not None
    metrics, tags = BATCHES[0]
    assert not rows.log(run_id, metrics, tags) and not rows.log("no-such-run", metrics, tags)
    rows.close()
    assert client.get_metric_history(run_id, "loss") == []


def test_what_mlflow_treats_specially_is_left_to_mlflow() -> None:
    assert not SqliteRows.takes([], [RunTag("mlflow.runName", "x")])
    assert not SqliteRows.takes([Metric("a b?", 1.0, 1, 0)], [])
    assert not SqliteRows.takes([], [RunTag("fishtune.error", "x" * 8001)])
    assert SqliteRows.takes([Metric("val_accuracy", 1.0, 1, 0)], [RunTag("fishtune.error", "x" * 8000)])


def test_only_a_sqlite_file_with_mlflows_tables_is_opened(tmp_path: Path) -> None:
    assert SqliteRows.open("http://127.0.0.1:5000") is None
    assert SqliteRows.open(f"sqlite:///{tmp_path / 'absent.db'}") is None
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE metrics (key TEXT, value REAL)").connection.close()
    assert SqliteRows.open(f"sqlite:///{other}") is None


def test_params_read_back_as_mlflows_and_a_changed_one_is_left_to_mlflow(store: tuple[str, MlflowClient, str]) -> None:
    uri, client, exp = store
    by_mlflow, by_rows = client.create_run(exp).info.run_id, client.create_run(exp).info.run_id
    params = [Param("train.lr", "0.02"), Param("model.name", "mlp")]
    rows = SqliteRows.open(uri)
    assert rows is not None and SqliteRows.takes([], [], params)
    for _ in range(2):  # the same values again change nothing
        client.log_batch(by_mlflow, params=params, synchronous=True)
        assert rows.log(by_rows, [], [], params)
    assert (
        client.get_run(by_rows).data.params == client.get_run(by_mlflow).data.params == {p.key: p.value for p in params}
    )
    changed = [Param("train.lr", "0.05"), Param("train.epochs", "3")]
    assert not rows.log(by_rows, [Metric("loss", 1.0, 1, 0)], [], changed)  # nothing of it stored
    rows.close()
    assert client.get_run(by_rows).data.params == {p.key: p.value for p in params}
    assert client.get_metric_history(by_rows, "loss") == []
    assert not SqliteRows.takes([], [], [Param("a", "x" * 6001)]) and not SqliteRows.takes([], [], params + params[:1])


def test_find_run_is_search_runs_by_one_tag(store: tuple[str, MlflowClient, str]) -> None:
    uri, client, exp = store
    older = client.create_run(exp, tags={"fishtune.trial_id": "a"}, start_time=1000).info.run_id
    newer = client.create_run(exp, tags={"fishtune.trial_id": "a"}, start_time=2000).info.run_id
    deleted = client.create_run(exp, tags={"fishtune.trial_id": "b"}).info.run_id
    client.delete_run(deleted)
    elsewhere = client.create_experiment("other")
    client.create_run(elsewhere, tags={"fishtune.trial_id": "c"})
    rows = SqliteRows.open(uri)
    assert rows is not None
    found = {v: rows.find_run(exp, "fishtune.trial_id", v) for v in "abcd"}
    rows.close()
    by_mlflow = {
        v: next(
            (r.info.run_id for r in client.search_runs([exp], f"tags.`fishtune.trial_id` = '{v}'", max_results=1)), None
        )
        for v in "abcd"
    }
    assert found == by_mlflow == {"a": newer, "b": None, "c": None, "d": None} and older != newer
