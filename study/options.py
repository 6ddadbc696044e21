"""How a launch runs (the CLI's flags), as opposed to what it runs (the spec).

Kept apart from ``study.launcher`` so that the CLI can build it without importing Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for the driver of a submitted job


@dataclass(frozen=True, kw_only=True, slots=True)
class LaunchOptions:
    """Defaults of the run/resume flags live here only."""

    address: str | None = None  # join this Ray cluster; None starts a local Ray
    results: str | None = None  # Tune storage_path; None: <storage>/runs/<study>/ray
    mlflow_wait_s: float = 120.0  # at the end, how long to wait for an unreachable MLflow store
    pending_timeout_s: float = 600.0  # with address: how long to wait for an autoscaler to add what trials need
