"""Trials a killed driver leaves behind in MLflow.

Tune saves its experiment state every so often; MLflow (and Optuna) are written as trials go.
A driver killed in between (SIGKILL, power loss) can leave a child run for a trial that Tune's
saved state does not hold: resumed, Tune never runs that trial again (the searcher hands its
configuration to a new trial, :mod:`study.searcher`), so the run would stay RUNNING beside the
new trial's run, a duplicate. On resume such runs are marked ``fishtune.outcome=lost``, KILLED
and deleted (MLflow keeps deleted runs until ``mlflow gc``: ``mlflow runs restore`` brings one
back).
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from ray import tune

from study.mlflow_study import OUTCOME, ROLE, TRIAL_ID

log = logging.getLogger(__name__)
LOST = "lost"


def saved_trial_ids(experiment_path: str) -> set[str]:
    """The trials in the Tune experiment state saved at ``experiment_path``."""
    return {trial.trial_id for trial in tune.ExperimentAnalysis(experiment_path).trials}


def retire_lost_runs(client: MlflowClient, experiment_id: str, parent_run_id: str, known: Collection[str]) -> int:
    """Retire the study's RUNNING child runs whose trial is not in ``known``; how many."""
    running = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`{ROLE}` = 'trial' and attributes.status = 'RUNNING'"
        ),
        max_results=50_000,
    )
    lost = [run for run in running if run.data.tags.get(TRIAL_ID) not in known]
    for run in lost:
        client.set_tag(run.info.run_id, OUTCOME, LOST)
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        client.delete_run(run.info.run_id)
    if lost:
        log.warning(
            "%d MLflow run(s) belong to trials the stopped driver had not saved (%s); their configurations "
            "run again as new trials, and these runs are deleted (`mlflow runs restore --run-id ID` undoes it)",
            len(lost),
            ", ".join(sorted(str(run.data.tags.get(TRIAL_ID)) for run in lost)),
        )
    return len(lost)
