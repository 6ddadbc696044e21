"""The MLflow runs of trials a killed driver had not saved are retired on resume (a real SQLite store)."""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from study.lost_trials import retire_lost_runs


def test_only_running_runs_of_unsaved_trials_are_retired(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("s", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, tags={"fishtune.role": "study"}).info.run_id
    other_parent = client.create_run(exp, tags={"fishtune.role": "study"}).info.run_id

    def child(trial_id: str, status: str, under: str = parent) -> str:
        tags = {"fishtune.role": "trial", "fishtune.trial_id": trial_id, "mlflow.parentRunId": under}
        run_id = client.create_run(exp, tags=tags).info.run_id
        if status != "RUNNING":
            client.set_terminated(run_id, status)
        return run_id

    saved = child("saved", "RUNNING")
    lost = child("lost", "RUNNING")
    finished = child("finished-unsaved", "FINISHED")  # a whole trial ran after the last save: kept
    elsewhere = child("other-study", "RUNNING", under=other_parent)

    assert retire_lost_runs(client, exp, parent, {"saved"}) == 1
    active = {r.info.run_id for r in client.search_runs([exp], run_view_type=ViewType.ACTIVE_ONLY)}
    assert active == {parent, other_parent, saved, finished, elsewhere}
    gone = client.get_run(lost)
    assert gone.info.lifecycle_stage == "deleted" and gone.info.status == "KILLED"
    assert gone.data.tags["fishtune.outcome"] == "lost"
    assert retire_lost_runs(client, exp, parent, {"saved"}) == 0
