"""What the environment a command runs in decides: the MLflow store and the Ray cluster when no
flag names them (a flag beats the environment, which beats the spec, which beats the default),
and the paths a Ray job needs absolute."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from study.options import RAY_JOB_ENV
from study.spec_core import Tracking, storage_file
from trainables.schema import ConfigError

if TYPE_CHECKING:
    from study.spec import StudySpec

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own variable
RAY_ADDRESS_ENV = "RAY_ADDRESS"  # Ray's own variable; Ray sets it to "auto" inside a job


def tracking_uri_override(flag: str | None, environ: Mapping[str, str]) -> str | None:
    """--tracking-uri, else MLFLOW_TRACKING_URI; ``None`` leaves it to the spec or stored study."""
    if flag:
        return flag
    uri = environ.get(TRACKING_URI_ENV, "").strip()
    if not uri:
        return None
    try:
        Tracking(uri=uri)
    except ConfigError as exc:
        raise ConfigError(f"{TRACKING_URI_ENV}={uri} in the environment: {exc}") from None
    return uri


def ray_address(flag: str | None, environ: Mapping[str, str]) -> str | None:
    """--address, else RAY_ADDRESS: the cluster to join; ``None`` starts a local Ray."""
    source, address = "--address", flag
    if not address:
        source, address = RAY_ADDRESS_ENV, environ.get(RAY_ADDRESS_ENV, "").strip()
        if address in ("", "local"):
            return None
    if address.startswith("ray://"):
        raise ConfigError(
            f"{source} {address}: ray:// client addresses are not supported; run fishtune on the head node "
            "(--address auto) or submit it as a job: ray job submit --address http://HEAD:8265 --working-dir . "
            "-- fishtune run SPEC.yaml"
        )
    if address.startswith(("http://", "https://")):
        raise ConfigError(
            f"{source} {address}: a job-submission (dashboard) address, which a driver cannot join; submit the "
            f"study with `ray job submit -- fishtune run SPEC.yaml`, or unset {RAY_ADDRESS_ENV} to start a local Ray"
        )
    return address


def check_job_paths(storage: str, tracking_uri: str | None, spec: StudySpec, environ: Mapping[str, str]) -> None:
    """Inside a Ray job the working directory is a temporary copy of the submitted folder:
    relative study and MLflow paths would be lost with it."""
    if RAY_JOB_ENV not in environ:
        return
    if not Path(storage).expanduser().is_absolute():
        raise ConfigError(
            f"--storage {storage}: inside a Ray job the working directory is temporary; "
            "pass an absolute folder on the head node, e.g. --storage ~/fishtune"
        )
    uri = tracking_uri or spec.tracking.uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).expanduser().is_absolute():
        raise ConfigError(
            f"tracking.uri {uri}: inside a Ray job the working directory is temporary; "
            "pass --tracking-uri sqlite:////absolute/path/mlflow.db (e.g. in ~/fishtune) or an http:// server"
        )
    storage = spec.search.storage or ""
    in_file = storage_file(storage)
    if in_file is not None and not in_file[1].is_absolute():
        raise ConfigError(
            f"search.storage {storage}: inside a Ray job the working directory is temporary; "
            f"give an absolute {in_file[0]}/path on the head node, a database server's URL, "
            "journal (the study folder's file), or leave it out"
        )
