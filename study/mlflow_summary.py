"""The study's summary on its parent run, so that the MLflow UI shows what the study found.

Metrics (step = trials finished): ``trials_<outcome>`` for every outcome and
``best_val_accuracy`` (the highest last ``val_accuracy`` of a completed or early-stopped
trial); tags: ``fishtune.outcomes``, ``fishtune.best.*`` (the best trial's run, trial id and
searched values) and the run's description (``mlflow.note.content``). After ``fishtune
analyze``: ``primary_*`` metrics and ``fishtune.analysis.*`` tags (:func:`write_primary`).
Every write is recomputed from the store, so repeating it is harmless.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import Any

from mlflow.entities import Metric, Run, RunTag
from mlflow.tracking import MlflowClient

from study.mlflow_study import OUTCOME, ROLE, SEARCHED, TRIAL_ID
from trainables.report import VAL_ACCURACY, Outcome

log = logging.getLogger(__name__)

BEST = "best_val_accuracy"
RANKED = (Outcome.COMPLETED.value, Outcome.EARLY_STOPPED.value)
PRIMARY_TAG = "fishtune.analysis.primary"
NOTE = "mlflow.note.content"


def trial_runs(client: MlflowClient, experiment: str) -> list[Run]:
    return client.search_runs([experiment], filter_string=f"tags.`{ROLE}` = 'trial'", max_results=50_000)


def best_run(runs: list[Run]) -> Run | None:
    ranked = [
        r
        for r in runs
        if r.data.tags.get(OUTCOME) in RANKED and math.isfinite(r.data.metrics.get(VAL_ACCURACY, math.nan))
    ]
    return max(ranked, key=lambda r: r.data.metrics[VAL_ACCURACY], default=None)


def write_summary(client: MlflowClient, experiment: str, parent_run_id: str) -> None:
    parent = client.get_run(parent_run_id)
    searched = [name for name in parent.data.tags.get(SEARCHED, "").split(",") if name]
    runs = trial_runs(client, experiment)
    counts = Counter(r.data.tags.get(OUTCOME, Outcome.RUNNING.value) for r in runs)
    finished = len(runs) - counts[Outcome.RUNNING.value]
    now = int(time.time() * 1000)
    metrics = [Metric(f"trials_{o.value}", float(counts[o.value]), now, finished) for o in Outcome]
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    tags = [RunTag("fishtune.outcomes", outcomes)]
    lines = [f"**{len(runs)} trials**: {outcomes}."]
    best = best_run(runs)
    if best is not None:
        value = best.data.metrics[VAL_ACCURACY]
        metrics.append(Metric(BEST, value, now, finished))
        tags += [
            RunTag("fishtune.best.run", best.info.run_name or ""),
            RunTag("fishtune.best.run_id", best.info.run_id),
            RunTag("fishtune.best.trial_id", best.data.tags.get(TRIAL_ID, "")),
            *(RunTag(f"fishtune.best.{name}", best.data.params.get(name, "")) for name in searched),
        ]
        lines.append(f"**Best {VAL_ACCURACY}** {value:.4g}: `{best.info.run_name}`.")
    if PRIMARY_TAG in parent.data.tags:
        lines.append(parent.data.tags[PRIMARY_TAG])
    tags.append(RunTag(NOTE, "\n\n".join(lines)))
    client.log_batch(parent_run_id, metrics=metrics, tags=tags, synchronous=True)


def write_primary(tracking_uri: str, study: str, primary: dict[str, Any], text: str) -> None:
    """The analysis's primary result (``report["primary"]``, and its sentence) on the parent run."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study)
    parents = [] if exp is None else client.search_runs([exp.experiment_id], f"tags.`{ROLE}` = 'study'", max_results=1)
    if exp is None or not parents:
        log.warning("study %s has no parent run in %s: the primary result is not written there", study, tracking_uri)
        return
    parent = parents[0].info.run_id
    now = int(time.time() * 1000)
    low, high = primary.get("ci95") or (None, None)
    values = {
        "primary_estimate": primary.get("estimate"),
        "primary_p": primary.get("p"),
        "primary_ci95_low": low,
        "primary_ci95_high": high,
        "primary_n_configurations": primary.get("n_configurations"),
        "primary_n_trials": primary.get("n"),
    }
    metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if v is not None]
    tags = [
        RunTag("fishtune.analysis.measure", str(primary.get("measure", ""))),
        RunTag("fishtune.analysis.test", str(primary.get("test", ""))),
        RunTag(PRIMARY_TAG, text),
    ]
    client.log_batch(parent, metrics=metrics, tags=tags, synchronous=True)
    write_summary(client, exp.experiment_id, parent)
