"""A study whose Ray has no live node left ends with one line instead of waiting for ever."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from study.exit_codes import CannotGoOn
from study.node_watch import NodeWatch, RayNodesLost

from .helpers import CLI, STUDY_TIMEOUT_S, children, optuna_trials, run_until, tiny_spec, wait_for

ALIVE = {"NodeID": "a1" * 28, "Alive": True, "NodeManagerAddress": "10.0.0.1"}
DEAD = {
    "NodeID": "d4" * 28,
    "Alive": False,
    "NodeManagerAddress": "10.0.0.2",
    "DeathReason": 1,
    "DeathReasonMessage": "The node was marked dead because the detector missed too many heartbeats.\nmore",
}


class Table:
    """A node table that answers what it is told and counts the reads."""

    def __init__(self, *answers: list[dict[str, Any]] | Exception) -> None:
        self.answers = list(answers)
        self.reads = 0

    def __call__(self) -> list[dict[str, Any]]:
        self.reads += 1
        answer = self.answers[min(self.reads, len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_no_live_node_ends_the_launch_with_the_reason_and_how_to_continue() -> None:
    watch = NodeWatch("lost", interval_s=0, nodes=Table([DEAD]))
    with pytest.raises(RayNodesLost) as err:
        watch.on_step_begin(iteration=1, trials=[])
    message = str(err.value)
    assert isinstance(err.value, CannotGoOn) and "\n" not in message
    assert "node d4d4d4d4d4d4 at 10.0.0.2: The node was marked dead because the detector missed" in message
    assert message.endswith("continue with `fishtune resume lost`")


@pytest.mark.parametrize("table", [[ALIVE], [DEAD, ALIVE], []], ids=["alive", "one-left", "empty"])
def test_a_ray_with_a_live_node_or_none_registered_yet_goes_on(table: list[dict[str, Any]]) -> None:
    NodeWatch("on", interval_s=0, nodes=Table(table)).on_step_begin(iteration=1, trials=[])


def test_the_table_is_read_once_per_interval() -> None:
    table = Table([ALIVE])
    watch = NodeWatch("on", interval_s=3600, nodes=table)
    for step in range(5):
        watch.on_step_begin(iteration=step, trials=[])
    assert table.reads == 1
    restored = pickle.loads(pickle.dumps(watch))  # as Tune restores it in a new driver: checks at once
    restored.on_step_begin(iteration=6, trials=[])
    assert restored.nodes.reads == 2


def test_a_table_that_cannot_be_read_is_logged_and_read_again(caplog: pytest.LogCaptureFixture) -> None:
    table = Table(ConnectionError("GCS did not answer"), [DEAD])
    watch = NodeWatch("flaky", interval_s=0, nodes=table)
    with caplog.at_level(logging.WARNING, logger="study.node_watch"):
        watch.on_step_begin(iteration=1, trials=[])
    assert "could not read Ray's node table (ConnectionError: GCS did not answer)" in caplog.text
    with pytest.raises(RayNodesLost):
        watch.on_step_begin(iteration=2, trials=[])
    assert table.reads == 2


def _node_processes(session: int) -> list[int]:
    """The pids of the one raylet in process session ``session`` and of the workers it started
    (from /proc: no psutil here)."""
    table: dict[int, tuple[str, int, int]] = {}  # pid → (comm, ppid, session)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            pid, rest = stat.read_text().split(" (", 1)
            comm, fields = rest.rsplit(") ", 1)
            _, ppid, _, sid = fields.split()[:4]  # state ppid pgrp session
            table[int(pid)] = (comm, int(ppid), int(sid))
    (raylet,) = [pid for pid, (comm, _, sid) in table.items() if comm == "raylet" and sid == session]
    return [raylet, *(pid for pid, (_, ppid, _) in table.items() if ppid == raylet)]


@pytest.mark.ray
def test_a_study_whose_node_is_marked_dead_stops_and_resumes_on_a_new_ray(tmp_path: Path) -> None:
    """Real Ray: the node hangs mid-trial (its raylet and the workers it started are frozen) and
    the GCS (told to give up after two missed 1-s health checks) marks it dead. Before, Tune waited
    for ever with zero resources; now the run exits 1 within a minute, and `fishtune resume`
    finishes the study. The trial's worker is frozen too: left running, it finished its 40 epochs
    before the node was marked dead in one CI run, and the driver then hung on the frozen raylet."""
    spec = tiny_spec(tmp_path, "frozen", num_samples=1, max_concurrent=1)
    spec.write_text(spec.read_text().replace("epochs: 2", "epochs: 40"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--storage", str(tmp_path / "storage"), "--tracking-uri", uri]
    impatient = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "RAY_health_check_failure_threshold": "2",
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "1000",
    }
    proc, out = run_until(
        [sys.executable, "-c", CLI, "run", str(spec), *common], tmp_path, "study frozen: running", impatient
    )
    try:
        assert proc.poll() is None, out
        wait_for(lambda: len(children(uri, "frozen")) == 1, STUDY_TIMEOUT_S, "the trial's MLflow run")
        for pid in _node_processes(proc.pid):
            os.kill(pid, signal.SIGSTOP)
        rest, _ = proc.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the stopped node and whatever else is left
            os.killpg(proc.pid, signal.SIGKILL)
    out += rest
    assert proc.returncode == 1, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("fishtune: study frozen: Ray has no live node left (node "), out
    # one line, not our traceback (Tune's own log of the lost trial has one)
    assert last.endswith("continue with `fishtune resume frozen`") and "RayNodesLost" not in out, out

    resumed = subprocess.run(
        [sys.executable, "-c", CLI, "resume", "frozen", *common],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=STUDY_TIMEOUT_S,
        start_new_session=True,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    (run,) = children(uri, "frozen")
    assert (run.data.tags["fishtune.outcome"], run.info.status) == ("completed", "FINISHED")
    assert [t.state.name for t in optuna_trials(tmp_path / "storage", "frozen")] == ["COMPLETE"]
