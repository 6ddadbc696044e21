"""The driver's MLflow write queue on a real SQLite store, without Ray: writes refused for good,
and writes kept on disk while the store is away."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient

from study.tracking import MlflowTracking, Write


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("queue")
    return uri, exp, client.create_run(exp).info.run_id


def test_a_write_refused_for_good_is_dropped_and_does_not_hold_back_the_rest(store: tuple[str, str, str]) -> None:
    uri, exp, parent = store
    tracking = MlflowTracking(uri, exp, parent)
    tracking._pending += [
        Write("t1", "batch", params=[Param("train.lr", "0.1")]),
        Write("t1", "batch", params=[Param("train.lr", "0.2")]),  # MLflow never changes a param
        Write("t1", "batch", tags=[RunTag("fishtune.outcome", "completed")]),
    ]
    assert tracking.flush() == 0 and tracking.refused == 1
    run = MlflowClient(uri).get_run(tracking.run_id("t1"))
    assert run.data.params["train.lr"] == "0.1" and run.data.tags["fishtune.outcome"] == "completed"


def test_writes_kept_on_disk_survive_a_failed_replay_and_land_later(
    store: tuple[str, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with socket.socket() as s:  # nothing listens there: a store that is down
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    uri, exp, parent = store
    kept = tmp_path / "runs" / "queue" / "mlflow-unwritten.jsonl"

    away = MlflowTracking(down, exp, parent)
    away._names["t1"] = "trial one"
    away._pending += [Write("t1", "batch", params=[Param("train.lr", "0.1")]), Write("t1", "close", status="FINISHED")]
    assert away.drain(timeout_s=0) == 2
    away.save_pending(kept)
    assert kept.is_file() and away.pending == []

    assert MlflowTracking(down, exp, parent).replay(kept) == 2
    assert kept.is_file()  # still down: nothing given up

    back = MlflowTracking(uri, exp, parent)
    assert back.replay(kept) == 0 and not kept.exists()
    run = MlflowClient(uri).get_run(back.run_id("t1"))
    assert run.info.run_name == "trial one" and run.data.params["train.lr"] == "0.1"
    assert run.info.status == "FINISHED"
