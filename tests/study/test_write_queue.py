"""The driver's MLflow write queue without Ray or Tune: a real SQLite store, and clients or
servers that fail, refuse, hang or never answer."""

from __future__ import annotations

import logging
import pickle
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities import Run as MlflowRun
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient

from study import mlflow_writes, sqlite_rows
from study.mlflow_study import TRIAL_ID
from study.mlflow_writes import Write, batches
from study.sqlite_rows import SqliteRows
from study.write_queue import WriteQueue

Store = tuple[str, str, str]  # tracking URI, experiment id, parent run id


def new_store(folder: Path) -> Store:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("queue", artifact_location=(folder / "artifacts").as_uri())
    return uri, exp, client.create_run(exp).info.run_id


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module: a new one costs seconds of migrations."""
    return new_store(tmp_path_factory.mktemp("mlflow"))[0]


@pytest.fixture
def store(shared_db: str, request: pytest.FixtureRequest) -> Store:
    """A fresh experiment and parent run in the shared store."""
    client = MlflowClient(shared_db)
    artifacts = Path(shared_db.removeprefix("sqlite:///")).parent / "artifacts"  # not ./mlruns of the checkout
    exp = client.create_experiment(
        f"queue-{request.node.name}-{time.monotonic_ns()}", artifact_location=artifacts.as_uri()
    )
    return shared_db, exp, client.create_run(exp).info.run_id


@pytest.fixture
def queues() -> Iterator[Callable[..., WriteQueue]]:
    """Make queues; each is closed at the end, so that no writer thread outlives its test."""
    made: list[WriteQueue] = []

    def make(uri: str, exp: str, parent: str, **kwargs: Any) -> WriteQueue:
        made.append(WriteQueue(uri, exp, parent, **kwargs))
        return made[-1]

    yield make
    for queue in made:
        queue.close()


def child(uri: str, exp: str, trial_id: str) -> MlflowRun:
    found = MlflowClient(uri).search_runs([exp], filter_string=f"tags.`{TRIAL_ID}` = '{trial_id}'")
    assert len(found) == 1, found
    return found[0]


def history(uri: str, run: MlflowRun, name: str) -> list[int]:
    return [m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, name)]


def a_trial(trial_id: str, epochs: int = 3) -> list[Write]:
    """What the callback queues for a short trial: params, status, per-epoch metrics and tags, close."""
    writes = batches(trial_id, params=[Param("train.lr", "0.1"), Param("train.seed", "0")])
    writes.append(Write(trial_id, "status", tags=[RunTag("fishtune.outcome", "running")]))
    for epoch in range(epochs):
        points = [Metric("fisher_trace", float(s), 1000 + s, s) for s in range(epoch * 10, epoch * 10 + 10)]
        writes += batches(trial_id, metrics=points, tags=[RunTag("fishtune.node", "n1")])
    writes.append(Write(trial_id, "batch", tags=[RunTag("fishtune.outcome", "completed")]))
    writes.append(Write(trial_id, "close", status="FINISHED"))
    return writes


def assert_trial_stored_once(uri: str, exp: str, trial_id: str, epochs: int = 3) -> None:
    run = child(uri, exp, trial_id)
    assert run.info.status == "FINISHED" and run.data.tags["fishtune.outcome"] == "completed"
    assert run.data.params == {"train.lr": "0.1", "train.seed": "0"}
    assert history(uri, run, "fisher_trace") == list(range(epochs * 10))  # each step once, in order
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id)}
    assert "curves.parquet" in artifacts


class FlakyClient(MlflowClient):
    """A real client on the store whose ``log_batch`` fails while ``down`` is set, and blocks
    while ``hang`` is set (``entered`` tells that a call is waiting)."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.down, self.hang, self.entered = threading.Event(), threading.Event(), threading.Event()
        self.answer = threading.Event()

    def log_batch(self, *args: Any, **kwargs: Any) -> Any:
        if self.hang.is_set():
            self.entered.set()
            self.answer.wait(timeout=30)
        if self.down.is_set():
            raise ConnectionError("store away")
        return super().log_batch(*args, **kwargs)


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_every_write_lands_once_and_in_order(store: Store, queues: Callable[..., WriteQueue]) -> None:
    uri, exp, parent = store
    queue = queues(uri, exp, parent)
    queue.name_run("t1", "trial one")
    queue.put(*a_trial("t1"))
    assert queue.drain(timeout_s=30) == 0 and queue.pending == [] and queue.refused == 0
    assert_trial_stored_once(uri, exp, "t1")
    assert child(uri, exp, "t1").info.run_name == "t001 trial one"  # numbered in the study, then labelled


def test_a_write_refused_for_good_is_dropped_and_does_not_hold_back_the_rest(
    store: Store, queues: Callable[..., WriteQueue], caplog: pytest.LogCaptureFixture
) -> None:
    uri, exp, parent = store
    queue = queues(uri, exp, parent)
    queue.put(
        Write("t1", "batch", params=[Param("train.lr", "0.1")]),
        Write("t1", "batch", params=[Param("train.lr", "0.2")]),  # MLflow never changes a param
        Write("t1", "batch", tags=[RunTag("fishtune.outcome", "completed")]),
    )
    assert queue.drain(timeout_s=30) == 0 and queue.refused == 1
    run = child(uri, exp, "t1")
    assert run.data.params["train.lr"] == "0.1" and run.data.tags["fishtune.outcome"] == "completed"
    assert "MLflow refused a batch write of trial t1 (keys: train.lr)" in caplog.text


def test_a_store_that_fails_keeps_every_write_until_it_answers_again(
    store: Store, queues: Callable[..., WriteQueue], caplog: pytest.LogCaptureFixture
) -> None:
    uri, exp, parent = store
    client = FlakyClient(uri)
    client.down.set()
    queue = queues(uri, exp, parent, client=client, retry_pause_s=0.05)
    with caplog.at_level(logging.WARNING):
        queue.put(*a_trial("t1"))
        wait_until(lambda: "unreachable" in caplog.text)
        time.sleep(0.3)  # several retries fail
        assert len(queue.pending) == len(a_trial("t1"))  # nothing dropped
        client.down.clear()
        assert queue.drain(timeout_s=30) == 0
    assert "buffering" in caplog.text and "reachable again" in caplog.text
    assert_trial_stored_once(uri, exp, "t1")


def test_with_async_logging_on_a_batch_the_store_fails_stays_queued(
    tmp_path: Path, queues: Callable[..., WriteQueue], monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLFLOW_ENABLE_ASYNC_LOGGING=true would make log_batch return at once and MLflow's own
    thread drop the failed batch, so the queue must log synchronously."""
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "true")

    def fails(self: SqlAlchemyStore, *args: Any, **kwargs: Any) -> None:
        raise MlflowException("database is locked", error_code="TEMPORARILY_UNAVAILABLE")

    monkeypatch.setattr(SqlAlchemyStore, "log_batch", fails)
    monkeypatch.setattr(SqliteRows, "open", lambda uri: None)  # every write through MLflow's client
    uri, exp, parent = new_store(tmp_path)  # a store made now: its async queue logs with `fails` too
    queue = queues(uri, exp, parent, retry_pause_s=0.05)
    write = Write("t1", "batch", metrics=[Metric("fisher_trace", 1.0, 1000, 0)])
    queue.put(write)
    assert queue.drain(timeout_s=1) == 1 and queue.pending == [write]


def test_a_sqlite_store_locked_by_another_process_keeps_the_writes_until_it_is_free(
    store: Store, queues: Callable[..., WriteQueue], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Points and tags go straight into the SQLite tables (study.sqlite_rows): a lock held
    longer than the writer waits is an outage like any other."""
    monkeypatch.setattr(sqlite_rows, "LOCK_WAIT_S", 0.05)
    uri, exp, parent = store
    queue = queues(uri, exp, parent, retry_pause_s=0.05)
    queue.put(*a_trial("t1")[:2])  # the run exists, its params are stored
    wait_until(lambda: not queue.pending)
    other = sqlite3.connect(uri.removeprefix("sqlite:///"), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with caplog.at_level(logging.WARNING):
        queue.put(*a_trial("t1")[2:])
        wait_until(lambda: "unreachable" in caplog.text)
        time.sleep(0.3)  # several retries fail
        assert len(queue.pending) == len(a_trial("t1")) - 2
        other.execute("ROLLBACK")
        assert queue.drain(timeout_s=30) == 0
    assert_trial_stored_once(uri, exp, "t1")


def test_put_returns_at_once_while_the_store_hangs_and_every_write_lands_once_it_answers(
    store: Store, queues: Callable[..., WriteQueue]
) -> None:
    uri, exp, parent = store
    client = FlakyClient(uri)
    client.hang.set()
    queue = queues(uri, exp, parent, client=client)
    writes = a_trial("t1")
    queue.put(writes[0])
    wait_until(client.entered.is_set)  # the writer is stuck in the store
    started = time.monotonic()
    for write in writes[1:]:
        queue.put(write)
    assert time.monotonic() - started < 0.5
    client.hang.clear()
    client.answer.set()
    assert queue.drain(timeout_s=30) == 0
    assert_trial_stored_once(uri, exp, "t1")


def test_a_black_holed_store_neither_blocks_put_nor_loses_a_write(
    store: Store, queues: Callable[..., WriteQueue], black_hole: str, tmp_path: Path
) -> None:
    """An http:// store that accepts and never answers: enqueueing stays instant, the drain
    gives up at its deadline, the spill keeps everything, and its replay stores each write once."""
    uri, exp, parent = store
    away = queues(black_hole, exp, parent)
    away.name_run("t1", "trial one")
    started = time.monotonic()
    for write in a_trial("t1"):
        away.put(write)
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    assert away.drain(timeout_s=1) == len(a_trial("t1"))
    assert time.monotonic() - started < 5  # the deadline, not HTTP timeout × retries per write
    kept = tmp_path / "mlflow-unwritten.jsonl"
    assert away.spill(kept) == len(a_trial("t1")) and away.pending == []

    back = queues(uri, exp, parent)
    assert back.replay(kept) == 0 and not kept.exists()
    assert_trial_stored_once(uri, exp, "t1")
    assert child(uri, exp, "t1").info.run_name == "t001 trial one"  # numbered in the study, then labelled


def test_spilled_writes_survive_a_failed_replay_and_land_later(
    store: Store, queues: Callable[..., WriteQueue], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with socket.socket() as s:  # nothing listens there: a store that is down
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    uri, exp, parent = store
    kept = tmp_path / "runs" / "queue" / "mlflow-unwritten.jsonl"

    away = queues(down, exp, parent)
    away.name_run("t1", "trial one")
    away.put(*a_trial("t1"))
    assert away.drain(timeout_s=0) == len(a_trial("t1"))
    assert away.spill(kept) == len(a_trial("t1"))
    assert kept.is_file() and away.pending == []

    assert queues(down, exp, parent).replay(kept, timeout_s=0.5) == len(a_trial("t1"))
    assert kept.is_file()  # still down: nothing given up

    assert queues(uri, exp, parent).replay(kept) == 0 and not kept.exists()
    assert_trial_stored_once(uri, exp, "t1")
    assert child(uri, exp, "t1").info.run_name == "t001 trial one"  # numbered in the study, then labelled


def test_a_queue_pickles_with_its_writes_and_without_its_thread(
    queues: Callable[..., WriteQueue], black_hole: str
) -> None:
    """Tune pickles its callbacks, so the queue must pickle while its writer runs."""
    queue = queues(black_hole, "0", "parent")
    queue.name_run("t1", "trial one")
    queue.put(*a_trial("t1"))
    copy = pickle.loads(pickle.dumps(queue))
    assert [w.to_json() for w in copy.pending] == [w.to_json() for w in a_trial("t1")]
    copy.close()


def test_put_after_the_queue_gave_up_is_refused(store: Store, queues: Callable[..., WriteQueue]) -> None:
    uri, exp, parent = store
    queue = queues(uri, exp, parent)
    queue.spill(Path("/nonexistent/never-written.jsonl"))  # nothing queued: no file
    with pytest.raises(RuntimeError, match="stopped"):
        queue.put(Write("t1", "batch", tags=[RunTag("fishtune.outcome", "running")]))


def test_batches_keep_within_mlflow_limits_in_order() -> None:
    metrics = [Metric("fisher_trace", 0.0, 0, s) for s in range(2500)]
    params = [Param(f"p{i}", "0") for i in range(150)]
    writes = batches("t1", params=params, metrics=metrics, tags=[RunTag("a", "b")])
    assert [(len(w.params), len(w.metrics), len(w.tags)) for w in writes] == [
        (100, 0, 0),
        (50, 0, 0),
        (0, 1000, 0),
        (0, 1000, 0),
        (0, 500, 0),
        (0, 0, 1),
    ]
    assert [m.step for w in writes for m in w.metrics] == list(range(2500))


class CountingClient(FlakyClient):
    """A :class:`FlakyClient` that counts its ``log_batch`` calls."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.calls = 0

    def log_batch(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super().log_batch(*args, **kwargs)


def test_a_writer_behind_stores_a_trials_queued_batches_in_one_call_each_point_once(
    store: Store, queues: Callable[..., WriteQueue]
) -> None:
    """Many trials reporting at once: what queued up behind a slow call goes in fewer, larger
    calls, each trial's points in order, once, and another trial's writes are not held back."""
    uri, exp, parent = store
    client = CountingClient(uri)
    client.hang.set()
    queue = queues(uri, exp, parent, client=client)
    queue.put(Write("t0", "batch", tags=[RunTag("fishtune.node", "n0")]))
    wait_until(client.entered.is_set)  # the writer is in a slow call; reports queue up behind it
    for epoch in range(10):
        for trial in ("t1", "t2"):
            points = [Metric("fisher_trace", float(s), 1000 + s, s) for s in range(epoch * 10, epoch * 10 + 10)]
            queue.put(*batches(trial, metrics=points, tags=[RunTag("fishtune.node", f"n{epoch}")]))
    client.hang.clear()
    client.answer.set()
    assert queue.drain(timeout_s=30) == 0 and queue.refused == 0
    assert client.calls == 3  # t0's, then t1's 20 writes in one call, then t2's
    for trial in ("t1", "t2"):
        run = child(uri, exp, trial)
        assert history(uri, run, "fisher_trace") == list(range(100))
        assert run.data.tags["fishtune.node"] == "n9"  # a tag set twice keeps its last value


def test_a_writer_behind_stores_the_latest_of_the_queued_summaries_only(
    store: Store, queues: Callable[..., WriteQueue], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each finished trial queues a rewrite of the study's summary, which reads every trial run;
    queued behind a slow call, the summaries but the last are skipped, every trial's own writes kept."""
    summaries: list[str] = []
    monkeypatch.setattr(mlflow_writes, "write_summary", lambda client, exp, parent: summaries.append(exp))
    uri, exp, parent = store
    client = CountingClient(uri)
    client.hang.set()
    queue = queues(uri, exp, parent, client=client)
    queue.put(Write("t0", "batch", tags=[RunTag("fishtune.node", "n0")]))
    wait_until(client.entered.is_set)
    for trial in ("t1", "t2", "t3"):
        queue.put(Write(trial, "batch", tags=[RunTag("fishtune.outcome", "completed")]), Write(trial, "summary"))
    client.hang.clear()
    client.answer.set()
    assert queue.drain(timeout_s=30) == 0 and queue.refused == 0
    assert summaries == [exp]
    assert all(child(uri, exp, t).data.tags["fishtune.outcome"] == "completed" for t in ("t1", "t2", "t3"))
