"""The study's MLflow experiment and its parent run (design.md §4).

One experiment per study (named after it), holding one parent run with the resolved spec as
params and the versions as tags; trial runs are its children (``study.tracking``). Found by
name and by the ``fishtune.role`` tag, so every launch and resume of a study reuses them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient

from study.spec import StudySpec
from trainables.schema import flatten

MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit for params
ROLE, TRIAL_ID, OUTCOME = "fishtune.role", "fishtune.trial_id", "fishtune.outcome"


def experiment_id(client: MlflowClient, spec: StudySpec) -> str:
    exp = client.get_experiment_by_name(spec.name)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if spec.tracking.uri.startswith("sqlite:///"):  # keep artifacts beside the database, not in cwd
        artifacts = (Path(spec.tracking.uri.removeprefix("sqlite:///")).parent / "mlartifacts" / spec.name).as_uri()
    return client.create_experiment(spec.name, artifact_location=artifacts)


def parent_run(client: MlflowClient, spec: StudySpec, versions: dict[str, str]) -> str:
    """The study's parent run id; created once with the resolved, flattened spec as params."""
    exp = experiment_id(client, spec)
    found = client.search_runs([exp], filter_string=f"tags.`{ROLE}` = 'study'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(
        exp, run_name=spec.name, tags={ROLE: "study", "fishtune.searched": ",".join(spec.search.space)}
    )
    run_id = run.info.run_id
    params = [Param(k, str(v)) for k, v in spec_params(spec).items()]
    for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[start : start + MAX_PARAMS_PER_BATCH])
    client.log_batch(run_id, tags=[RunTag(f"fishtune.version.{k}", v) for k, v in versions.items()])
    client.log_dict(run_id, spec.to_yaml_dict(), "spec.yaml")
    return run_id


def spec_params(spec: StudySpec) -> dict[str, Any]:
    """The resolved spec as dotted params; each searched domain is one JSON value."""
    nested = spec.to_yaml_dict()
    nested["search"]["space"] = {k: json.dumps(d.to_yaml()) for k, d in spec.search.space.items()}
    return flatten(nested)
