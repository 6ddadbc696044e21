"""An MLflow tracking server that goes away in the middle of a study (design.md §4, issues 8, 17).

A real ``mlflow server`` sits behind a TCP forwarder that the test can cut (connections refused,
as for a server that is down or a network partition) or turn into a black hole (connections
accepted and never answered, as for a hung server). No trial may wait for the store, and
nothing the study logs may be lost, reordered or written twice; the user is told.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from mlflow.tracking import MlflowClient

from study.store import StudyStore

from .helpers import CLI_TIMEOUT_S, ROOT, STUDY_TIMEOUT_S, children, free_port, tiny_spec, wait_for

pytestmark = pytest.mark.ray


class Forwarder:
    """127.0.0.1:<port> → the server; ``cut()`` closes every connection and refuses new ones,
    ``black_hole()`` closes them and holds new ones open without an answer."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.mode: Literal["up", "cut", "hole"] = "up"
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if self.mode == "cut":
                client.close()
                continue
            if self.mode == "hole":
                with self.lock:
                    self.open.append(client)
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass  # the other side closed or the forwarder was cut
        finally:
            for s in (src, dst):
                s.close()

    def cut(self) -> None:
        self.mode = "cut"
        self._close_open()

    def black_hole(self) -> None:
        self.mode = "hole"
        self._close_open()

    def _close_open(self) -> None:
        with self.lock:
            for s in self.open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed
            self.open.clear()

    def restore(self) -> None:
        self.mode = "up"
        self._close_open()  # held (black-holed) connections fail now instead of at their timeout

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite backend, served artifacts) for this module."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts"),
    ]  # fmt: skip
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return True
        except OSError:
            return server.poll() is not None  # stop waiting if it died; the assert below says so

    try:
        wait_for(healthy, 120, "mlflow server start")
        assert server.poll() is None, (folder / "server.log").read_text()
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture
def forwarder(mlflow_server: str) -> Iterator[Forwarder]:
    f = Forwarder(int(mlflow_server.rsplit(":", 1)[1]))
    yield f
    f.close()


def start_study(tmp_path: Path, name: str, uri: str, storage: Path, *extra: str) -> subprocess.Popen[str]:
    spec = tiny_spec(tmp_path, name, space={"train.lr": {"grid": [0.05, 0.03, 0.02]}}, sampler="grid", num_samples=3)
    spec.write_text(
        spec.read_text().replace("epochs: 2", "epochs: 4").replace("max_concurrent: 2", "max_concurrent: 1")
    )
    command = [
        sys.executable,
        "-m",
        "study",
        "run",
        str(spec),
        "--storage",
        str(storage),
        "--tracking-uri",
        uri,
        *extra,
    ]
    out = (tmp_path / f"{name}.out").open("w")
    return subprocess.Popen(
        command,
        cwd=tmp_path,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def output(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}.out").read_text()


def finished_trials(tmp_path: Path, name: str) -> int:
    """Trials the study printed as finished (its ``[k/3]`` lines)."""
    return sum(f"[{k}/3]" in output(tmp_path, name) for k in range(1, 4))


def first_epoch_logged(server: str, study: str) -> bool:
    runs = children(server, study) if MlflowClient(server).get_experiment_by_name(study) else []
    return any("val_accuracy" in r.data.metrics for r in runs)


def assert_every_trial_complete(server: str, study: str) -> None:
    client = MlflowClient(server)
    runs = children(server, study)
    assert len(runs) == 3
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["fishtune.outcome"] == "completed", run.data.tags
        val_steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert len(val_steps) == 4 and len(set(val_steps)) == 4, val_steps  # every epoch, once
        fisher_steps = [m.step for m in client.get_metric_history(run.info.run_id, "fisher_trace")]
        assert len(fisher_steps) == len(set(fisher_steps)) and 0 in fisher_steps, fisher_steps
        assert "curves.parquet" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert run.data.params["train.lr"]


def test_store_down_mid_study_is_buffered_and_written_when_it_returns(
    mlflow_server: str, forwarder: Forwarder, tmp_path: Path
) -> None:
    uri = f"http://127.0.0.1:{forwarder.port}"
    proc = start_study(tmp_path, "outage", uri, tmp_path / "storage")
    try:
        wait_for(lambda: first_epoch_logged(mlflow_server, "outage"), 240, "the first epoch in MLflow")
        forwarder.cut()
        done = finished_trials(tmp_path, "outage")
        wait_for(lambda: "unreachable" in output(tmp_path, "outage"), 120, "the driver to notice the outage")
        wait_for(lambda: finished_trials(tmp_path, "outage") > done, 180, "a trial to finish while the store is away")
        forwarder.restore()
        assert proc.wait(timeout=STUDY_TIMEOUT_S) == 0, output(tmp_path, "outage")
    finally:
        proc.kill()
    text = output(tmp_path, "outage")
    assert "buffering" in text and "reachable again" in text
    assert_every_trial_complete(mlflow_server, "outage")


def test_store_that_hangs_mid_study_stalls_no_trial_and_gets_every_write_when_it_answers(
    mlflow_server: str, forwarder: Forwarder, tmp_path: Path
) -> None:
    """With the driver's own HTTP limits (30 s × 2 per request), a store that never answers
    must not slow the trials: they all finish while it hangs (issue 17)."""
    uri = f"http://127.0.0.1:{forwarder.port}"
    proc = start_study(tmp_path, "hang", uri, tmp_path / "storage")
    try:
        wait_for(lambda: first_epoch_logged(mlflow_server, "hang"), 240, "the first epoch in MLflow")
        forwarder.black_hole()
        wait_for(lambda: finished_trials(tmp_path, "hang") == 3, 240, "every trial to finish while the store hangs")
        forwarder.restore()
        assert proc.wait(timeout=STUDY_TIMEOUT_S) == 0, output(tmp_path, "hang")
    finally:
        proc.kill()
    assert_every_trial_complete(mlflow_server, "hang")


def test_store_still_down_at_the_end_keeps_the_data_for_resume(
    mlflow_server: str, forwarder: Forwarder, tmp_path: Path
) -> None:
    uri, storage = f"http://127.0.0.1:{forwarder.port}", tmp_path / "storage"
    proc = start_study(tmp_path, "outage-end", uri, storage, "--mlflow-wait", "1")
    try:
        wait_for(lambda: first_epoch_logged(mlflow_server, "outage-end"), 240, "the first epoch in MLflow")
        forwarder.cut()
        assert proc.wait(timeout=STUDY_TIMEOUT_S) == 1, output(tmp_path, "outage-end")
    finally:
        proc.kill()
    kept = StudyStore(storage, "outage-end").unwritten_path
    assert kept.is_file() and str(kept) in output(tmp_path, "outage-end")

    forwarder.restore()
    resume = [sys.executable, "-m", "study", "resume", "outage-end", "--storage", str(storage)]
    done = subprocess.run(resume, cwd=tmp_path, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not kept.exists()
    assert_every_trial_complete(mlflow_server, "outage-end")
