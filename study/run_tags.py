"""Names of the tags that mark a study's MLflow runs, importable without MLflow (the fast
``status`` path reads them). :mod:`study.mlflow_study` writes them; a test checks the two agree."""

from __future__ import annotations

ROLE, TRIAL_ID, OUTCOME = "fishtune.role", "fishtune.trial_id", "fishtune.outcome"
SEARCHED = "fishtune.searched"  # on the parent run: the searched fields, comma-separated
STUDY_ROLE, TRIAL_ROLE = "study", "trial"
