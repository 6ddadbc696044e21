"""Flag > environment > spec > default, for the MLflow store and the Ray cluster."""

from __future__ import annotations

import pytest

from study.environment import ray_address, tracking_uri_override
from trainables.schema import ConfigError


@pytest.mark.parametrize(
    ("flag", "environ", "expected"),
    [
        (None, {}, None),  # the spec (or stored study) decides
        (None, {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}, "http://mlflow:5000"),
        (None, {"MLFLOW_TRACKING_URI": "  "}, None),
        ("sqlite:////a/mlflow.db", {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}, "sqlite:////a/mlflow.db"),
    ],
)
def test_tracking_uri_precedence(flag: str | None, environ: dict[str, str], expected: str | None) -> None:
    assert tracking_uri_override(flag, environ) == expected


def test_an_unusable_mlflow_tracking_uri_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^MLFLOW_TRACKING_URI=databricks in the environment: tracking\.uri"):
        tracking_uri_override(None, {"MLFLOW_TRACKING_URI": "databricks"})
    assert tracking_uri_override("sqlite:////a.db", {"MLFLOW_TRACKING_URI": "databricks"}) == "sqlite:////a.db"


@pytest.mark.parametrize(
    ("flag", "environ", "expected"),
    [
        (None, {}, None),  # a local Ray
        (None, {"RAY_ADDRESS": "auto"}, "auto"),  # what Ray sets inside `ray job submit`
        (None, {"RAY_ADDRESS": "10.0.0.5:6379"}, "10.0.0.5:6379"),
        (None, {"RAY_ADDRESS": "local"}, None),
        ("head:6379", {"RAY_ADDRESS": "auto"}, "head:6379"),
    ],
)
def test_ray_address_precedence(flag: str | None, environ: dict[str, str], expected: str | None) -> None:
    assert ray_address(flag, environ) == expected


@pytest.mark.parametrize(
    ("flag", "environ", "expected"),
    [
        ("ray://head:10001", {}, "--address ray://head:10001: ray:// client"),
        (None, {"RAY_ADDRESS": "ray://head:10001"}, "RAY_ADDRESS ray://head:10001: ray:// client"),
        (None, {"RAY_ADDRESS": "http://127.0.0.1:8265"}, "RAY_ADDRESS http://127.0.0.1:8265: a job-submission"),
    ],
)
def test_addresses_a_driver_cannot_join_are_refused_naming_their_source(
    flag: str | None, environ: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        ray_address(flag, environ)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)
