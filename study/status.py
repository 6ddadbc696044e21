"""The study's trials as a table, read from MLflow (``fishtune status`` and the final summary).

``fishtune status`` must answer in well under 2 s, and importing MLflow alone takes about as
long here, so a SQLite store is read with :mod:`sqlite3` (read-only, five of MLflow's tables:
experiments, runs, tags, params, latest_metrics); other stores go through ``MlflowClient``. A
test checks that both readers give the same table. Nothing here imports torch or Ray.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from study.run_tags import OUTCOME, ROLE, SEARCHED, STUDY_ROLE, TRIAL_ID, TRIAL_ROLE
from trainables import report
from trainables.schema import ConfigError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

Format = Literal["table", "json", "csv"]
FORMATS: tuple[Format, ...] = ("table", "json", "csv")

COLUMNS = {  # MLflow metric → table column
    report.EPOCH: "epochs",
    report.VAL_ACCURACY: "val_acc",
    report.TEST_ACCURACY: "test_acc",
    report.FISHER_PEAK: "TrF_peak",
}


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What the table needs of one MLflow run."""

    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # the latest value of each
    start_time: int


def study_table(uri: str, study: str) -> pd.DataFrame:
    """The trials table of ``study`` in the store at ``uri``, by the fastest reader for it."""
    if uri.startswith("sqlite:///"):
        return table_from_runs(*_sqlite_runs(Path(uri.removeprefix("sqlite:///")), study))
    from mlflow.tracking import MlflowClient

    return runs_table(MlflowClient(uri), study)


def runs_table(client: MlflowClient, study: str) -> pd.DataFrame:
    """One row per child run: trial id, searched params, outcome, epochs, accuracies, Tr(F) peak."""
    return table_from_runs(*_client_runs(client, study))


def table_from_runs(parent: RunRecord | None, trials: Iterable[RunRecord]) -> pd.DataFrame:
    searched = [s for s in (parent.tags.get(SEARCHED, "") if parent else "").split(",") if s]
    rows = []
    columns = ["trial", *searched, "outcome", *COLUMNS.values()]
    for run in trials:
        row: dict[str, object] = {"trial": run.tags.get(TRIAL_ID, "?")}
        row.update({name: _number(run.params.get(name)) for name in searched})
        row["outcome"] = run.tags.get(OUTCOME, "?")
        row.update({col: run.metrics.get(metric) for metric, col in COLUMNS.items()})
        row["start"] = run.start_time
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=columns)  # the CSV of an empty study still has its header
    table = pd.DataFrame(rows).sort_values("start", kind="stable").drop(columns="start").reset_index(drop=True)
    table["epochs"] = np.floor(table["epochs"].astype(float)).astype("Int64")  # completed epochs
    return table


def _client_runs(client: MlflowClient, study: str) -> tuple[RunRecord | None, list[RunRecord]]:
    exp = client.get_experiment_by_name(study)
    if exp is None:
        raise ConfigError(f"study {study!r}: no such MLflow experiment in this tracking store")

    def search(role: str, limit: int) -> list[RunRecord]:
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE}` = '{role}'", max_results=limit)
        return [RunRecord(r.data.tags, r.data.params, r.data.metrics, r.info.start_time) for r in runs]

    parents = search(STUDY_ROLE, 1)
    return (parents[0] if parents else None), search(TRIAL_ROLE, 50_000)


def _sqlite_runs(path: Path, study: str) -> tuple[RunRecord | None, list[RunRecord]]:
    """The same records as :func:`_client_runs`, from MLflow's SQLite tables (active runs only)."""
    if not path.is_file():
        raise ConfigError(f"tracking.uri: no MLflow database at {path}")
    with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(experiments)")}
        in_workspace = " AND workspace = 'default'" if "workspace" in columns else ""
        found = db.execute(f"SELECT experiment_id FROM experiments WHERE name = ?{in_workspace}", (study,)).fetchone()
        if found is None:
            raise ConfigError(f"study {study!r}: no such MLflow experiment in this tracking store")
        runs = {
            run_id: RunRecord({}, {}, {}, start or 0)
            for run_id, start in db.execute(
                "SELECT run_uuid, start_time FROM runs WHERE experiment_id = ? AND lifecycle_stage = 'active'", found
            )
        }
        selected = "SELECT t.key, t.value, t.run_uuid FROM {} t JOIN runs r ON r.run_uuid = t.run_uuid WHERE r.experiment_id = ?"
        for key, value, run_id in db.execute(selected.format("tags"), found):
            if run_id in runs:
                runs[run_id].tags[key] = value
        for key, value, run_id in db.execute(selected.format("params"), found):
            if run_id in runs:
                runs[run_id].params[key] = value
        metrics = (
            "SELECT m.key, m.value, m.is_nan, m.run_uuid FROM latest_metrics m "
            "JOIN runs r ON r.run_uuid = m.run_uuid WHERE r.experiment_id = ?"
        )
        for key, value, is_nan, run_id in db.execute(metrics, found):
            if run_id in runs:
                runs[run_id].metrics[key] = math.nan if is_nan else float(value)
    parents = [r for r in runs.values() if r.tags.get(ROLE) == STUDY_ROLE]
    return (parents[0] if parents else None), [r for r in runs.values() if r.tags.get(ROLE) == TRIAL_ROLE]


def _number(text: str | None) -> object:
    """A param as MLflow stores it (text): an int where it is one (train.seed 1, not 1.0), a
    float where it is a number, else the text."""
    if text is None:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def format_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no trials yet)"
    shown = table.astype(object).where(table.notna(), np.nan)  # None, as in a column never logged, prints "—" too
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="—")


def format_outcomes(table: pd.DataFrame) -> str:
    """``outcomes: completed 10, diverged 2``."""
    return "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcome_counts(table).items()))


def outcome_counts(table: pd.DataFrame) -> dict[str, int]:
    return {} if table.empty else {str(k): int(v) for k, v in table["outcome"].value_counts().items()}


def render(table: pd.DataFrame, study: str, uri: str, fmt: Format) -> str:
    """``status`` output: the readable table with a header and the outcomes line; JSON (one
    object: study, tracking_uri, outcomes, trials as records, missing values as null); or CSV."""
    if fmt == "json":
        trials: list[dict[str, Any]] = table.astype(object).where(table.notna(), None).to_dict(orient="records")
        return json.dumps({"study": study, "tracking_uri": uri, "outcomes": outcome_counts(table), "trials": trials})
    if fmt == "csv":
        return table.to_csv(index=False).rstrip("\n")
    lines = [f"study {study} ({uri})", format_table(table)]
    return "\n".join([*lines, format_outcomes(table)] if not table.empty else lines)


def summary_text(client: MlflowClient, study: str) -> str:
    """The trials table and the outcomes line, as the end of a launch shows them."""
    table = runs_table(client, study)
    return format_table(table) if table.empty else f"{format_table(table)}\n{format_outcomes(table)}"
