"""The driver's side of the study's MLflow store around a launch: is it reachable, open the
study's parent run, write what an earlier launch kept on disk, close the parent run."""

from __future__ import annotations

import logging
import os
import subprocess
from importlib import metadata
from pathlib import Path

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from study.mlflow_study import experiment_id, parent_run
from study.spec import StudySpec
from study.spec_core import masked
from study.store import StudyStore
from study.store_check import check_tracking_store
from study.tracking import MlflowTracking
from trainables.schema import ConfigError

log = logging.getLogger(__name__)

# The queue in study/write_queue.py retries failed writes; MLflow's own client would block its
# writer thread and the end-of-launch drain for minutes per call (7 retries with exponential
# backoff) while a server is down. MLflow reads these per request from the process environment.
# Nor should it print "View run … at: URL" for every run it ends on a tracking server (two lines
# per trial among the progress lines, which name the trials already).
MLFLOW_CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def use_short_mlflow_retries() -> None:
    for key, value in MLFLOW_CLIENT_ENV.items():
        os.environ.setdefault(key, value)


def versions() -> dict[str, str]:
    out = {name: metadata.version(name) for name in ("torch", "ray", "optuna", "mlflow")}
    out["git_commit"] = git_commit()
    return out


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def open_parent_run(spec: StudySpec) -> tuple[MlflowClient, str, str]:
    """Connect to the tracking store (a user error if unreachable) and get the parent run."""
    client = MlflowClient(spec.tracking.uri)
    try:
        exp = experiment_id(client, spec)
        run_id = parent_run(client, spec, versions())
    except Exception as exc:  # any failure to open the store is the user's URI or server
        raise ConfigError(
            f"tracking.uri: cannot open the MLflow store {masked(spec.tracking.uri)} ({type(exc).__name__}: {masked(str(exc))[:200]})"
        ) from exc
    return client, exp, run_id


def replay_unwritten(spec: StudySpec, store: StudyStore, client: MlflowClient, exp: str, parent: str) -> None:
    """Write what an earlier launch could not store in MLflow (kept in the study folder)."""
    if not store.unwritten_path.is_file():
        return
    left = MlflowTracking(spec.tracking.uri, exp, parent).replay(store.unwritten_path)
    if left:
        raise ConfigError(
            f"tracking.uri: the MLflow store {masked(spec.tracking.uri)} still does not take the {left} write(s) kept in "
            f"{store.unwritten_path}; check the store, or delete that file to give them up"
        )
    log.info("study %s: wrote the MLflow data an earlier launch had kept in %s", spec.name, store.unwritten_path)
    launches = store.launches()
    if launches and launches[-1].finished:
        close_parent(client, parent, RunStatus.to_string(RunStatus.FINISHED))


def replay_without_launch(spec: StudySpec, store: StudyStore) -> None:
    """For a command that starts no trials: still write what an earlier launch kept."""
    if store.unwritten_path.is_file():
        check_tracking_store(spec.tracking.uri, reading=False)
        client, exp, parent = open_parent_run(spec)
        replay_unwritten(spec, store, client, exp, parent)


def close_parent(client: MlflowClient, parent: str, status: str) -> None:
    try:
        client.set_terminated(parent, status=status)
    except Exception as exc:  # the store is down: replaying the kept writes closes it later
        log.warning("could not close the study's MLflow run %s (%s: %s)", parent, type(exc).__name__, str(exc)[:200])
