"""The study's trials as a table, read from MLflow (``fishtune status`` and the final summary)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from study.mlflow_study import OUTCOME, ROLE, TRIAL_ID
from trainables.schema import ConfigError

COLUMNS = {  # MLflow metric → table column
    "epoch": "epochs",
    "val_accuracy": "val_acc",
    "test_accuracy": "test_acc",
    "fisher_peak": "TrF_peak",
}


def trials_table(client: MlflowClient, study: str) -> pd.DataFrame:
    """One row per child run: trial id, searched params, outcome, epochs, accuracies, Tr(F) peak."""
    exp = client.get_experiment_by_name(study)
    if exp is None:
        raise ConfigError(f"study {study!r}: no such MLflow experiment in this tracking store")
    parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE}` = 'study'", max_results=1)
    searched = parents[0].data.tags.get("fishtune.searched", "").split(",") if parents else []
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE}` = 'trial'", max_results=50_000)
    rows = []
    for run in runs:
        row: dict[str, object] = {"trial": run.data.tags.get(TRIAL_ID, "?")}
        row.update({name: _number(run.data.params.get(name)) for name in searched if name})
        row["outcome"] = run.data.tags.get(OUTCOME, "?")
        row.update({col: run.data.metrics.get(metric) for metric, col in COLUMNS.items()})
        row["start"] = run.info.start_time
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).sort_values("start").drop(columns="start").reset_index(drop=True)
    table["epochs"] = np.floor(table["epochs"].astype(float)).astype("Int64")  # completed epochs
    return table


def _number(text: str | None) -> object:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def format_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no trials yet)"
    return table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="—")


def format_outcomes(table: pd.DataFrame) -> str:
    """``outcomes: completed 10, diverged 2``."""
    return "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(table["outcome"].value_counts().items()))


def summary_text(client: MlflowClient, study: str) -> str:
    """The trials table and the outcomes line, as the end of a launch shows them."""
    table = trials_table(client, study)
    return format_table(table) if table.empty else f"{format_table(table)}\n{format_outcomes(table)}"
