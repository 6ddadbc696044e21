"""The study's MLflow experiment and its parent run (design.md §4), and the names in it.

One experiment per study (named after it), holding one parent run with the resolved spec as
params and the versions as tags; trial runs are its children (``study.tracking``). Found by
name and by the ``fishtune.role`` tag, so every launch and resume of a study reuses them.

MLflow 3's UI opens an experiment in its GenAI view unless told otherwise: the experiment
carries ``mlflow.experimentKind = custom_model_development`` (what the UI's own kind selector
writes), and :func:`experiment_url` adds ``workflowType=machine_learning``, which MLflow 3.17's
UI reads before that tag (``server/js``: its workflow-type context, from the URL, then the
browser's stored choice, default GenAI).
"""

from __future__ import annotations

import getpass
import json
import math
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient

from study.spec import StudySpec
from study.spec_core import masked
from trainables.schema import flatten

MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit for params
ROLE, TRIAL_ID, OUTCOME = "fishtune.role", "fishtune.trial_id", "fishtune.outcome"
SEARCHED = "fishtune.searched"
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


def experiment_url(ui: str, experiment: str) -> str:
    """The study's page in the MLflow UI at ``ui`` (e.g. ``http://127.0.0.1:5000``), in its model-training view."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment}?workflowType=machine_learning"


def experiment_id(client: MlflowClient, spec: StudySpec) -> str:
    exp = client.get_experiment_by_name(spec.name)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND) is None:  # a study made before fishtune set the kind
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        return exp.experiment_id
    artifacts = None
    if spec.tracking.uri.startswith("sqlite:///"):  # keep artifacts beside the database, not in cwd
        artifacts = (Path(spec.tracking.uri.removeprefix("sqlite:///")).parent / "mlartifacts" / spec.name).as_uri()
    return client.create_experiment(spec.name, artifact_location=artifacts, tags={EXPERIMENT_KIND: MODEL_TRAINING})


def parent_run(client: MlflowClient, spec: StudySpec, versions: dict[str, str]) -> str:
    """The study's parent run id; created once with the resolved, flattened spec as params."""
    exp = experiment_id(client, spec)
    found = client.search_runs([exp], filter_string=f"tags.`{ROLE}` = 'study'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(
        exp, run_name=spec.name, tags={ROLE: "study", SEARCHED: ",".join(spec.search.space), **system_tags()}
    )
    run_id = run.info.run_id
    params = [Param(k, str(v)) for k, v in spec_params(spec).items()]
    for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[start : start + MAX_PARAMS_PER_BATCH])
    client.log_batch(run_id, tags=[RunTag(f"fishtune.version.{k}", v) for k, v in versions.items()])
    client.log_dict(run_id, public_spec(spec), "spec.yaml")
    return run_id


def public_spec(spec: StudySpec) -> dict[str, Any]:
    """The resolved spec as MLflow shows it: passwords in the tracking and storage URLs masked."""
    nested = spec.to_yaml_dict()
    nested["tracking"]["uri"] = masked(spec.tracking.uri)
    if spec.search.storage is not None:
        nested["search"]["storage"] = masked(spec.search.storage)
    return nested


def spec_params(spec: StudySpec) -> dict[str, Any]:
    """The resolved spec as dotted params (passwords masked); each searched domain is one JSON value."""
    nested = public_spec(spec)
    nested["search"]["space"] = {k: json.dumps(d.to_yaml()) for k, d in spec.search.space.items()}
    return flatten(nested)


def system_tags(cwd: Path | None = None) -> dict[str, str]:
    """MLflow's own run tags: the user, and the commit of the working directory's git checkout (if it is one)."""
    tags = {"mlflow.user": getpass.getuser(), "mlflow.source.name": "fishtune", "mlflow.source.type": "LOCAL"}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=cwd or Path.cwd(), timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout: MLflow leaves the tag out too
        return tags
    return tags | {"mlflow.source.git.commit": commit}


def run_label(searched: Mapping[str, Any]) -> str:
    """``lr=0.0185 coef=2.4e-4`` from searched values keyed by dotted name (the last part, unless two share it)."""
    last = [name.rsplit(".", 1)[-1] for name in searched]
    return " ".join(
        f"{short if last.count(short) == 1 else name}={short_value(value)}"
        for name, short, value in zip(searched, last, searched.values(), strict=True)
    )


def run_name(number: int, label: str) -> str:
    """A child run's name: the trial's number in the study, then its label (``t007 lr=0.0185``)."""
    return f"t{number:03d} {label}".rstrip()


def short_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value == 0 or not math.isfinite(value) or 1e-3 <= abs(value) < 1e4:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"
