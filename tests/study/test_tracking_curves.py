"""A trial's curves.parquet, written by the driver's callback, holds every step-level curve
the loop logs, the per-layer Tr(F) curves included (a regression: they were left out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from study.tracking import MlflowTracking
from trainables.config import TrialConfig
from trainables.report import EpochReport, Outcome, Placement


class FakeTrial:
    """What the callback reads of a Tune trial."""

    def __init__(self, trial_id: str, config: dict[str, Any], last_result: dict[str, Any]) -> None:
        self.trial_id, self.config, self.last_result = trial_id, config, last_result
        self.evaluated_params: dict[str, Any] = {}

    def __str__(self) -> str:
        return self.trial_id


def test_curves_parquet_has_the_per_layer_curves(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("curves", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp).info.run_id
    config = TrialConfig.from_mapping({"model": {"name": "mlp", "hidden": 4, "depth": 1}}).flat()
    result = EpochReport(
        epoch=1,
        step=4,
        metrics={"val_accuracy": 0.5, "val_loss": 1.0, "test_accuracy": 0.5, "test_loss": 1.0},
        curves={
            "epoch": [(0, 0.0), (4, 1.0)],
            "fisher_trace": [(0, 3.0), (4, 2.0)],
            "fisher_trace.layer.1": [(0, 2.0), (4, 1.5)],
            "fisher_trace.layer.3": [(0, 1.0), (4, 0.5)],
        },
        outcome=Outcome.COMPLETED,
    ).to_result(Placement("cpu"))
    trial = FakeTrial("t1", config, result)

    tracking = MlflowTracking(uri, exp, parent)
    tracking.on_trial_result(0, [], trial, result)  # type: ignore[arg-type]
    tracking.on_trial_complete(0, [], trial)  # type: ignore[arg-type]
    assert tracking.drain(timeout_s=30) == 0

    (run,) = client.search_runs([exp], filter_string="tags.`fishtune.trial_id` = 't1'")
    assert run.data.tags["fishtune.outcome"] == "completed"
    frame = pd.read_parquet(client.download_artifacts(run.info.run_id, "curves.parquet", str(tmp_path)))
    assert {"fisher_trace.layer.1", "fisher_trace.layer.3", "fisher_trace", "val_accuracy"} <= set(frame.columns)
    assert frame.set_index("step")["fisher_trace.layer.3"].to_dict() == {0: 1.0, 4: 0.5}
