"""The driver's Ray: start a local one (patiently, and once more on a busy machine) or join a
cluster, and stop it at the end."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray

import trainables
from study.exit_codes import CannotGoOn
from study.node_watch import RayNodesLost
from study.options import RAY_JOB_ENV

log = logging.getLogger(__name__)

WORKER_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
WORKER_RUNTIME_ENV: dict[str, Any] = {"env_vars": WORKER_ENV}
# Ray 2.60 waits 30 s for the GCS to publish its port and ~20 s for it to answer, and the
# raylet 30 s for its runtime-env agent to answer; this raises them (a user's own value wins).
# The raylet's wait for the agents' port files cannot be raised: agent_ports_given() skips it.
# The raylet's 30 s to register is fixed in Ray's node.py: a start that runs out of it is what
# the second attempt is for.
START_WAIT_ENV = {"RAY_gcs_server_port_wait_time_s": "120", "RAY_agent_register_timeout_ms": "120000"}
# A local Ray has one node: the GCS marking it dead ends the study (study.node_watch), and a raylet
# that crashed is noticed by the driver without health checks. So the GCS is told to wait ~4 times
# Ray's default (5 missed checks, each up to 10 s) before it gives up on a raylet too loaded to answer.
LOCAL_HEALTH_ENV = {"RAY_health_check_failure_threshold": "20"}
START_ATTEMPTS = 2
# The ports of the agents the raylet starts, given up front (see agent_ports_given); ray.init
# takes only the metrics export port (``_metrics_export_port``).
AGENT_PORTS = ("metrics_agent_port", "runtime_env_agent_port", "dashboard_agent_listen_port")


class RayStartFailed(CannotGoOn):
    """A local Ray did not come up in any attempt."""


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Use Ray if this process already initialised it; else start (or join) and shut it down."""
    os.environ.update(WORKER_ENV)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables; ProgressPrinter prints
    if ray.is_initialized():
        yield
        return
    if address is None:
        start_local()
    else:
        connect(address)
    # Ray's core worker installs a SIGTERM handler that aborts the driver; take SIGTERM back so
    # that it stops the study like Ctrl-C does (Tune saves its state, exit 130).
    previous = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        yield
    except RayNodesLost:
        if address is None:
            stop_dead_raylet()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        ray.shutdown()


def _init_kwargs() -> dict[str, Any]:
    return dict(runtime_env=WORKER_RUNTIME_ENV, log_to_driver=False, configure_logging=False)


def connect(address: str) -> None:
    kwargs = _init_kwargs()
    if RAY_JOB_ENV not in os.environ:  # a Ray job's working_dir already ships the code
        # Other nodes import the trainable from this copy of `trainables`, not from whatever
        # version their image has.
        kwargs["runtime_env"] = {**WORKER_RUNTIME_ENV, "py_modules": [str(Path(trainables.__file__).parent)]}
    ray.init(address=address, **kwargs)


def start_local() -> None:
    for key, value in {**START_WAIT_ENV, **LOCAL_HEALTH_ENV}.items():
        os.environ.setdefault(key, value)

    def start() -> None:
        metrics_export_port, *agent_ports = free_ports(1 + len(AGENT_PORTS))
        with agent_ports_given(dict(zip(AGENT_PORTS, agent_ports, strict=True))):
            # "local": a new Ray even where `ray start` left an address behind (ray.init() would join it)
            ray.init(
                address="local",
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                _metrics_export_port=metrics_export_port,
                **_init_kwargs(),
            )

    start_with_retry(start, abandon_partial_start)


def stop_dead_raylet() -> None:
    """Kill the raylet of the local node the GCS has marked dead, before ``ray.shutdown``: the
    driver's core worker waits on its raylet as it shuts down, for ever if the raylet is hung
    (what a missed-heartbeat death can mean). Ray 2.60 internals, kept to this function:
    ``ray._private.worker._global_node`` and ``Node.kill_raylet``."""
    node = ray._private.worker._global_node
    if node is not None:
        node.kill_raylet(check_alive=False)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free now (another process may still take one before
    Ray binds it: the agent then fails to start, and so does this attempt)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]


@contextlib.contextmanager
def agent_ports_given(ports: dict[str, int]) -> Iterator[None]:
    """While a local ``ray.init`` runs, give the agents of the node it starts their ports.

    Ray 2.60's raylet waits a fixed time (not configurable) for each agent it starts (dashboard
    agent, runtime-env agent) to write its port file, then aborts (``node_manager.cc``,
    WaitForDashboardAgentPorts; ray-project/ray#65983): on a loaded machine the agent's start
    outlasts that wait, and ``ray.init`` reports "The current node timed out during startup".
    The raylet does not wait for a port it is given on its command line; ``ray.init`` exposes
    none of them, so they are set on the ``RayParams`` it hands to ``Node``. The dashboard
    agent's HTTP port is not on the raylet's command line at all: its port file is written
    before the raylet starts (the agent writes it again once it listens).
    Ray 2.60 internals, kept to this function: ``Node.__init__(ray_params, ...)``,
    ``Node.start_raylet``, ``Node._session_dir``/``_node_id`` and ``ray._raylet.persist_port``.
    """
    from ray._private.node import Node
    from ray._raylet import DASHBOARD_AGENT_LISTEN_PORT_NAME, persist_port  # type: ignore[attr-defined]

    original_init, original_start_raylet = Node.__init__, Node.start_raylet

    def init(self: Node, ray_params: Any, *args: Any, **kwargs: Any) -> None:
        for name, port in ports.items():
            setattr(ray_params, name, port)
        original_init(self, ray_params, *args, **kwargs)

    def start_raylet(self: Node, *args: Any, **kwargs: Any) -> None:
        listen_port = ports.get("dashboard_agent_listen_port")
        if listen_port is not None:
            persist_port(self._session_dir, self._node_id, DASHBOARD_AGENT_LISTEN_PORT_NAME, listen_port)
        original_start_raylet(self, *args, **kwargs)

    Node.__init__ = init  # type: ignore[method-assign]
    Node.start_raylet = start_raylet  # type: ignore[method-assign]
    try:
        yield
    finally:
        Node.__init__ = original_init  # type: ignore[method-assign]
        Node.start_raylet = original_start_raylet  # type: ignore[method-assign]


def start_with_retry(
    start: Callable[[], None], abandon: Callable[[BaseException], None], attempts: int = START_ATTEMPTS
) -> None:
    """``start()``; after a failure to start, ``abandon(error)`` stops what it left running and
    the next attempt begins. Errors that are not start failures (bugs) propagate at once."""
    for attempt in range(1, attempts + 1):
        try:
            start()
            return
        except Exception as exc:
            if not is_start_failure(exc):
                raise
            abandon(exc)
            reason = _first_line(exc)
            if attempt == attempts:
                raise RayStartFailed(
                    f"a local Ray did not start in {attempts} attempt(s) (last: {reason}); this machine is "
                    "probably too busy: run again when it is less loaded, or join a running cluster with --address"
                ) from exc
            log.warning("a local Ray did not start (%s); stopping what it started and trying once more", reason)


def is_start_failure(exc: BaseException) -> bool:
    """How Ray 2.60 reports a start that ran out of time: a bare ``Exception`` ("The current node
    timed out during startup"), ``TimeoutError`` (a port never published), ``RuntimeError``
    ("Failed to start GCS") or ``ConnectionError``."""
    return type(exc) is Exception or isinstance(exc, TimeoutError | ConnectionError | RuntimeError)


def abandon_partial_start(exc: BaseException) -> None:
    """Stop the processes a failed local ``ray.init`` started, so that a retry does not run beside them.

    ``ray.init`` keeps the head node (``ray._private.worker._global_node``) only once it is up,
    so after a failure ``ray.shutdown()`` stops nothing: the half-started ``Node`` is reachable
    only as ``self`` in the frames of the error's traceback. Ray 2.60 internals, kept to this
    function: ``ray._private.node.Node.kill_all_processes``.
    """
    from ray._private.node import Node

    tb = exc.__traceback__
    while tb is not None:
        node = tb.tb_frame.f_locals.get("self")
        if isinstance(node, Node):
            node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)
            break
        tb = tb.tb_next
    ray.shutdown()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]
