"""Starting the driver's local Ray: a longer wait, one retry after stopping what the failed
attempt started, and one line if it still fails. Ray itself is faked: nothing is started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from ray._private.node import Node
from ray._private.parameter import RayParams

from study import ray_runtime
from study.cli import main
from study.exit_codes import CannotGoOn
from study.ray_runtime import RayStartFailed, abandon_partial_start, ray_session, start_with_retry

TIMED_OUT = "The current node timed out during startup. This could happen because some of the raylet failed"


def test_a_start_that_times_out_is_cleaned_up_and_tried_once_more() -> None:
    events: list[str] = []

    def start() -> None:
        events.append("start")
        if events.count("start") == 1:
            raise Exception(TIMED_OUT)  # what Ray 2.60 raises

    start_with_retry(start, lambda exc: events.append(f"abandon: {exc}"))
    assert events == ["start", f"abandon: {TIMED_OUT}", "start"]


def test_a_start_that_keeps_failing_ends_in_one_line() -> None:
    abandoned: list[BaseException] = []

    def start() -> None:
        raise TimeoutError("Timed out after 30 seconds while waiting for the GCS port\nmore detail")

    with pytest.raises(RayStartFailed) as err:
        start_with_retry(start, abandoned.append)
    assert len(abandoned) == 2  # each attempt's leftovers stopped, the last one's too
    message = str(err.value)
    assert "\n" not in message and "2 attempt(s)" in message and "Timed out after 30 seconds" in message
    assert isinstance(err.value, CannotGoOn) and isinstance(err.value.__cause__, TimeoutError)


def test_a_bug_is_not_retried() -> None:
    abandoned: list[BaseException] = []

    def start() -> None:
        raise ValueError("unexpected keyword argument")

    with pytest.raises(ValueError, match="unexpected keyword"):
        start_with_retry(start, abandoned.append)
    assert abandoned == []


class _HalfStartedNode(Node):
    """A Node whose start fails at once, recording what is asked to stop it."""

    def __init__(self) -> None:  # no processes: only what abandon_partial_start needs
        self.killed: list[dict[str, bool]] = []
        raise Exception(TIMED_OUT)

    def kill_all_processes(self, check_alive: bool = True, allow_graceful: bool = False, wait: bool = False) -> None:
        self.killed.append({"check_alive": check_alive, "allow_graceful": allow_graceful, "wait": wait})


def test_abandoning_a_start_stops_the_half_started_node(monkeypatch: pytest.MonkeyPatch) -> None:
    shutdowns: list[int] = []
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(1))
    node = _HalfStartedNode.__new__(_HalfStartedNode)
    with pytest.raises(Exception, match="timed out during startup") as err:
        node.__init__()  # type: ignore[misc]
    abandon_partial_start(err.value)
    assert node.killed == [{"check_alive": False, "allow_graceful": True, "wait": True}]
    assert shutdowns == [1]


def test_the_start_up_wait_is_raised_unless_the_user_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, object]] = []
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append(kw))
    monkeypatch.delenv("RAY_gcs_server_port_wait_time_s", raising=False)
    monkeypatch.delenv("RAY_health_check_failure_threshold", raising=False)
    ray_runtime.start_local()
    assert os.environ["RAY_gcs_server_port_wait_time_s"] == "120"
    assert os.environ["RAY_health_check_failure_threshold"] == "20"  # the GCS waits longer on its one raylet
    assert seen[0]["address"] == "local" and seen[0]["dashboard_host"] == "127.0.0.1"
    monkeypatch.setenv("RAY_gcs_server_port_wait_time_s", "300")
    ray_runtime.start_local()
    assert os.environ["RAY_gcs_server_port_wait_time_s"] == "300"


def test_local_ray_dashboard_binds_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with ray_session(None):
        pass
    assert seen["dashboard_host"] == "127.0.0.1" and seen["address"] == "local"


def test_run_on_a_machine_too_busy_for_ray_exits_1_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def init(**kwargs: object) -> None:
        raise Exception(TIMED_OUT)

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    spec = tmp_path / "s.yaml"
    spec.write_text("name: busy\nmodel: {name: mlp}\nsearch: {space: {train.lr: {uniform: [0.1, 0.2]}}}\n")
    db = tmp_path / "mlflow.db"
    assert main(["run", str(spec), "--storage", str(tmp_path / "st"), "--tracking-uri", f"sqlite:///{db}"]) == 1
    err = capsys.readouterr().err
    assert err.count("trying once more") == 1  # the retry is announced
    last = err.strip().splitlines()[-1]
    assert last.startswith("fishtune: a local Ray did not start in 2 attempt(s)") and "timed out" in last
    assert "Traceback" not in err
    assert not (tmp_path / "st").exists() and not db.exists()  # nothing written


def test_the_agents_get_their_ports_before_the_node_starts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[RayParams] = []
    monkeypatch.setattr(Node, "__init__", lambda self, ray_params, **kw: seen.append(ray_params))
    monkeypatch.setattr(Node, "start_raylet", lambda self, *a, **kw: seen.append(self))
    given = dict(zip(ray_runtime.AGENT_PORTS, ray_runtime.free_ports(3), strict=True))
    assert len(set(given.values())) == 3
    params = RayParams()
    node = Node.__new__(Node)
    node._session_dir, node._node_id = str(tmp_path), "ab" * 28
    with ray_runtime.agent_ports_given(given):
        node.__init__(params, head=True)  # type: ignore[misc]
        node.start_raylet("plasma", "fallback", 1)
    assert seen == [params, node]
    assert {name: getattr(params, name) for name in ray_runtime.AGENT_PORTS} == given
    # the raylet finds the dashboard agent's HTTP port without waiting for the agent
    (port_file,) = tmp_path.iterdir()
    assert port_file.name == f"dashboard_agent_listen_port_{'ab' * 28}"
    assert str(given["dashboard_agent_listen_port"]) in port_file.read_text()
    Node.__new__(Node).__init__(RayParams(), head=True)  # afterwards: Node as it was
    assert seen[-1].metrics_agent_port is None


@pytest.mark.ray
def test_local_ray_starts_though_its_agents_start_slower_than_the_raylet_waits(tmp_path: Path) -> None:
    """Real Ray: both agents start 40 s late, beyond the raylet's fixed wait for their port files
    (what a loaded machine does to them); the start still succeeds, at the first attempt."""
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "faults_slow_ray_agents"),
        "FISHTUNE_TEST_SLOW_AGENT_S": "40",
    }
    script = (
        "import logging, ray\n"
        "from study.ray_runtime import ray_session\n"
        "logging.basicConfig()\n"
        "with ray_session(None):\n"
        "    print('task', ray.get(ray.remote(lambda: 7).remote()))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        text=True,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = proc.communicate(timeout=400)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the Ray it started, if it did not stop it
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    assert "task 7" in out and "trying once more" not in out
