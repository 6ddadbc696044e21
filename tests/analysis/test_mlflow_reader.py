"""Reading a study back from MLflow: whose runs, and which curves."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from analysis.mlflow_reader import CURVES, CURVES_FILE, load_study
from analysis.report import analyze


def study_store(tmp_path: Path) -> tuple[MlflowClient, str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("s", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, tags={"fishtune.role": "study", "fishtune.searched": "train.lr"})
    client.log_param(parent.info.run_id, "fisher.epsilon", "0.5")
    return client, exp, parent.info.run_id


def test_only_the_parents_children_are_read_and_every_curve_is_there(tmp_path: Path) -> None:
    """A relaunch after the parent run was deleted read the old children too; a curves.parquet
    without the epoch-end curves (a trial that ended inside its first epoch) gave no key for
    them, and the memorisation figure raised a KeyError."""
    client, exp, parent = study_store(tmp_path)
    mine = client.create_run(exp, tags={"fishtune.role": "trial", "mlflow.parentRunId": parent})
    client.create_run(exp, tags={"fishtune.role": "trial", "mlflow.parentRunId": "an-older-parent"})
    folder = Path(mine.info.artifact_uri.removeprefix("file://"))
    folder.mkdir(parents=True)
    pd.DataFrame({"step": [0, 4], "fisher_trace": [1.0, 2.0], "epoch": [0.0, 0.1]}).to_parquet(folder / CURVES_FILE)
    data = load_study(client, "s")
    assert list(data.runs["run_id"]) == [mine.info.run_id]
    curves = data.curves[mine.info.run_id]
    assert set(curves) == set(CURVES) and curves["fisher_trace"].tolist() == [1.0, 2.0]
    assert curves["train_accuracy_noisy"].empty


def test_a_study_with_no_trial_yet_gets_a_report_that_says_so(tmp_path: Path) -> None:
    client, _, _ = study_store(tmp_path)
    report = analyze(client.tracking_uri, "s", tmp_path / "out")
    assert report["n_trials"] == 0 and "at least 3" in report["message"]
    assert (tmp_path / "out" / "report.md").is_file()
