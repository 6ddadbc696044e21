"""cluster.yaml against Ray's own cluster schema and config preparation, offline (no cloud calls)."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config  # private API, Ray 2.60

    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.mark.parametrize("path", sorted(ROOT.glob("cluster*.yaml")), ids=lambda p: p.name)
def test_cluster_file_is_valid(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    validate(config)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # trials never land on the head
    assert config["provider"]["type"] in ("aws", "gcp")
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    assert not any(k in path.read_text() for k in ("aws_access_key_id", "aws_secret_access_key", "private_key"))


@pytest.mark.parametrize("path", sorted(ROOT.glob("cluster*.yaml")), ids=lambda p: p.name)
def test_a_broken_key_is_caught(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    bad = copy.deepcopy(config)
    bad["available_node_types"]["worker_gpu"]["min_worker"] = 0  # typo of min_workers
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate(bad)
    fractional = copy.deepcopy(config)
    fractional["available_node_types"]["worker_gpu"]["resources"] = {"GPU": 0.5}
    with pytest.raises(jsonschema.ValidationError, match="integer"):
        validate(fractional)
