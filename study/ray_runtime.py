"""The driver's Ray: start a local one (patiently, and once more on a busy machine) or join a
cluster, and stop it at the end."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray

import trainables
from study.exit_codes import CannotGoOn
from study.options import RAY_JOB_ENV

log = logging.getLogger(__name__)

WORKER_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
WORKER_RUNTIME_ENV: dict[str, Any] = {"env_vars": WORKER_ENV}
# Ray 2.60 waits 30 s for the GCS to publish its port and ~20 s for it to answer; this raises
# both (a user's own value wins). The raylet's 30 s to register is fixed in Ray's node.py: a
# start that runs out of it is what the second attempt is for.
START_WAIT_ENV = {"RAY_gcs_server_port_wait_time_s": "120"}
START_ATTEMPTS = 2


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
    for key, value in START_WAIT_ENV.items():
        os.environ.setdefault(key, value)

    def start() -> None:
        # "local": a new Ray even where `ray start` left an address behind (ray.init() would join it)
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", **_init_kwargs())

    start_with_retry(start, abandon_partial_start)


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
