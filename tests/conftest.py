"""Shared fixtures: one local Ray for the whole session, one MLflow SQLite store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

for key, value in {
    "RAY_AUTH_MODE": "disabled",  # no token file in the home folder for local tests
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}.items():
    os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray (2 CPUs, no dashboard) shared by every end-to-end test, shut down at the end."""
    import ray

    ray.init(
        address="local",  # never a cluster some `ray start` on this machine left behind
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 1024**2,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the session (its migrations take seconds); studies use distinct names."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return tmp_path / "storage"
