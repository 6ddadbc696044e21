"""Read a study from MLflow through the data contract of design.md §4 (and nothing else).

The edge of the analysis: everything after this module is pure functions over DataFrames.
Curves (``CURVES``) come from each child run's exact metric history (never MLflow's down-sampling bulk
endpoint), or from a ``curves.parquet`` artifact when a run has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
from mlflow.tracking import MlflowClient

from analysis import names

# train_examples (examples per train_loss window) is absent from studies logged before it existed.
CURVES = (
    names.TRAIN_LOSS,
    names.TRAIN_EXAMPLES,
    names.FISHER_TRACE,
    names.FISHER_TRACE_STDERR,
    names.FISHER_LAMBDA_MAX,
    names.FISHER_LAMBDA_MAX_LR,
    names.EPOCH,
    names.VAL_ACCURACY,
    names.TRAIN_ACCURACY_NOISY,  # this and the four below: studies with label noise only
    names.TRAIN_ACCURACY_CLEAN,
    names.FISHER_TRACE_NOISY,
    names.FISHER_TRACE_NOISY_STDERR,
    names.FISHER_TRACE_CLEAN,
    names.FISHER_TRACE_CLEAN_STDERR,
)
CURVES_FILE = "curves.parquet"


class StudyNotFound(LookupError):
    """The tracking store has no such study (a user error: the message says what to check)."""


@dataclass(frozen=True, slots=True)
class StudyData:
    name: str
    parent_run_id: str
    params: dict[str, str]  # the parent run's flattened spec
    searched: list[str]
    runs: pd.DataFrame  # one row per child run: run_id, trial_id, outcome, params.*, metrics.*
    curves: dict[str, dict[str, pd.Series]]  # run_id → metric → Series indexed by step


def load_study(client: MlflowClient, name: str) -> StudyData:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise StudyNotFound(f"study {name!r}: no such MLflow experiment in {client.tracking_uri}")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`fishtune.role` = 'study'", max_results=1)
    if not parents:
        raise StudyNotFound(f"study {name!r}: the experiment has no fishtune parent run")
    parent = parents[0]
    children = f"tags.`fishtune.role` = 'trial' and tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    runs = client.search_runs([exp.experiment_id], filter_string=children, max_results=50_000)
    rows, curves = [], {}
    for run in runs:
        row: dict[str, object] = {
            "run_id": run.info.run_id,
            "trial_id": run.data.tags.get("fishtune.trial_id", run.info.run_id),
            "outcome": run.data.tags.get("fishtune.outcome", "unknown"),
            "start_time": run.info.start_time,
        }
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        rows.append(row)
        curves[run.info.run_id] = _curves(client, run.info.run_id, run.info.artifact_uri)
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values("start_time").reset_index(drop=True)
    searched = [s for s in parent.data.tags.get("fishtune.searched", "").split(",") if s]
    return StudyData(name, parent.info.run_id, dict(parent.data.params), searched, table, curves)


def _curves(client: MlflowClient, run_id: str, artifact_uri: str) -> dict[str, pd.Series]:
    path = _curves_file(client, run_id, artifact_uri)
    if path is not None:
        frame = pd.read_parquet(path).set_index("step")
        # every curve, as the metric-history path gives them: the driver writes only curves with
        # points, and a trial that ended inside its first epoch has no epoch-end ones
        return {name: frame[name].dropna() if name in frame else pd.Series(dtype=float) for name in CURVES}
    out = {}
    for name in CURVES:
        history = client.get_metric_history(run_id, name)
        series = pd.Series({m.step: m.value for m in history}, dtype=float).sort_index()
        out[name] = series
    return out


def _curves_file(client: MlflowClient, run_id: str, artifact_uri: str) -> str | None:
    """The run's ``curves.parquet``: read in place from a local artifact store, else downloaded."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        local = Path(unquote(parsed.path)) / CURVES_FILE
        return str(local) if local.is_file() else None
    if CURVES_FILE in {artifact.path for artifact in client.list_artifacts(run_id)}:
        return client.download_artifacts(run_id, CURVES_FILE)
    return None
