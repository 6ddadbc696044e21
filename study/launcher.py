"""Launch, extend and resume a study on Ray Tune with Optuna and MLflow.

Each ``fishtune run`` of a study is one *launch*: a Tune experiment ``launch-<n>`` that runs
the trials still missing to reach ``search.num_samples``, against the study's persistent
Optuna storage (so the sampler sees every earlier trial). ``fishtune resume`` restores the last
unfinished launch with ``Tuner.restore``. The pieces: :mod:`study.ray_runtime` (Ray),
:mod:`study.mlflow_parent` (the MLflow store), :mod:`study.tuning` (the Tuner) and
:func:`study.exit_codes.launch_outcome` (the exit status).
"""

from __future__ import annotations

import logging

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from ray import tune

from study import exit_codes
from study.cluster import check_resources, check_results_shared
from study.exit_codes import LaunchEnd, Outcome, launch_outcome
from study.interrupts import recorded_interrupt
from study.lost_trials import retire_lost_runs, saved_trial_ids
from study.mlflow_parent import (
    close_parent,
    git_commit,
    open_parent_run,
    replay_unwritten,
    replay_without_launch,
    use_short_mlflow_retries,
)
from study.node_watch import NodeWatch
from study.options import LaunchOptions
from study.optuna_storage import check_storage
from study.progress import ProgressPrinter
from study.ray_runtime import ray_session
from study.spec import StudySpec
from study.spec_core import masked
from study.status import summary_text
from study.store import Launch, StudyStore
from study.store_check import check_tracking_store
from study.store_tables import ensure_tables
from study.tracking import MlflowTracking
from study.tuning import build_tuner, restore_tuner, restored_callbacks
from trainables.data import ensure_available
from trainables.report import Outcome as TrialOutcome
from trainables.report import reported_outcome
from trainables.schema import ConfigError

log = logging.getLogger(__name__)


def prepare_data(spec: StudySpec) -> None:
    """Download and verify every data set the study can use, once, on the driver: an offline
    machine gets one clear error (exit 2) before anything starts, not failing trials. On a
    multi-node cluster each node still needs ``data.cache_dir`` shared or its own download."""
    domain = spec.search.searched.get("data.name")
    names = {str(v) for v in domain.values} if domain is not None else {spec.trial.data.name}
    for name in sorted(names):
        ensure_available(name, spec.trial.data.cache_dir)


def start_launch(spec: StudySpec, store: StudyStore, options: LaunchOptions) -> Outcome:
    use_short_mlflow_retries()
    launches = store.launches()
    if launches and not launches[-1].finished:
        raise ConfigError(
            f"study {spec.name!r} has an unfinished launch; finish it with `fishtune resume {spec.name}` first"
        )
    done = launches[-1].total_samples if launches else 0
    todo = spec.search.num_samples - done
    if todo <= 0:
        replay_without_launch(spec, store)
        return Outcome(
            exit_codes.OK, f"study {spec.name!r} already has {done} trials; raise --num-samples to extend it"
        )
    check_tracking_store(spec.tracking.uri, reading=False)  # an unusable store is refused before Ray starts
    check_storage(spec.search.storage, spec.name, new_study=not launches)
    prepare_data(spec)
    with ray_session(options.address):
        arithmetic = check_resources(spec, options.address, options.pending_timeout_s)
        results = options.results or store.default_results
        if options.address is not None:
            check_results_shared(results)
        ensure_tables(spec.tracking.uri)
        client, exp, parent = open_parent_run(spec)  # MLflow is written only once every check passed
        replay_unwritten(spec, store, client, exp, parent)
        store.save_spec(spec)
        index = len(launches) + 1
        launch = Launch(index, f"launch-{index}", results, spec.search.num_samples, todo)
        tracking = MlflowTracking(spec.tracking.uri, exp, parent)
        progress = ProgressPrinter(list(spec.search.space), spec.search.num_samples, already_done=done)
        tuner = build_tuner(spec, store, launch, [tracking, progress, NodeWatch(spec.name)])
        store.save_launches([*launches, launch])  # only once it can run: else `resume` would have nothing
        client.set_tag(
            parent,
            f"fishtune.launch.{index}",
            f"num_samples={todo} total={spec.search.num_samples} max_concurrent={spec.search.max_concurrent} commit={git_commit()}",
        )
        log.info("%s", arithmetic)
        log.info(
            "study %s: running %d trial(s) (total %d); MLflow: %s; Optuna: %s",
            spec.name,
            todo,
            spec.search.num_samples,
            masked(spec.tracking.uri),
            masked(store.storage_url(spec.search.storage)),
        )
        return _finish(spec, store, client, parent, tuner, [tracking], options.mlflow_wait_s)


def resume_launch(spec: StudySpec, store: StudyStore, options: LaunchOptions) -> Outcome:
    use_short_mlflow_retries()
    launches = store.launches()
    if not launches or launches[-1].finished:
        replay_without_launch(spec, store)
        return Outcome(
            exit_codes.OK,
            f"study {spec.name!r} has nothing to resume; extend it with `fishtune run SPEC --num-samples N`",
        )
    launch = launches[-1]
    path = f"{launch.results.rstrip('/')}/{launch.experiment}"
    check_tracking_store(spec.tracking.uri, reading=False)
    check_storage(spec.search.storage, spec.name, new_study=False)
    prepare_data(spec)
    with ray_session(options.address):
        log.info("%s", check_resources(spec, options.address, options.pending_timeout_s))
        if options.address is not None:
            check_results_shared(launch.results)
        if not tune.Tuner.can_restore(path):
            raise ConfigError(f"study {spec.name!r}: no Tune experiment state at {path} to resume")
        ensure_tables(spec.tracking.uri)
        client, exp, parent = open_parent_run(spec)
        replay_unwritten(spec, store, client, exp, parent)
        retire_lost_runs(client, exp, parent, saved_trial_ids(path))
        log.info("study %s: resuming %s from %s", spec.name, launch.experiment, path)
        tuner = restore_tuner(spec, path)
        trackers = [cb for cb in restored_callbacks(tuner) if isinstance(cb, MlflowTracking)]
        return _finish(spec, store, client, parent, tuner, trackers, options.mlflow_wait_s)


def _finish(
    spec: StudySpec,
    store: StudyStore,
    client: MlflowClient,
    parent: str,
    tuner: tune.Tuner,
    trackers: list[MlflowTracking],
    mlflow_wait_s: float,
) -> Outcome:
    """Run the experiment, keep what MLflow did not take, close the parent run, and say how it ended."""
    client.update_run(parent, status=RunStatus.to_string(RunStatus.RUNNING))
    interrupted, failed, unwritten, refused = True, 0, 0, 0
    try:
        with recorded_interrupt() as stopped:
            grid = tuner.fit()
        launches = store.launches()
        interrupted = stopped.is_set() or grid.num_terminated + grid.num_errors < launches[-1].num_samples
        if not interrupted:
            launches[-1].finished = True
            store.save_launches(launches)
        reported = (reported_outcome(grid[i].metrics) for i in range(len(grid)))
        failed = grid.num_errors + sum(outcome == TrialOutcome.FAILED for outcome in reported)
    finally:  # also when fit() raised: what MLflow has not taken yet is kept, never dropped
        for tracking in trackers:
            if tracking.drain(mlflow_wait_s):
                unwritten += len(tracking.pending)
                tracking.save_pending(store.unwritten_path)
            refused += tracking.refused
        status = RunStatus.KILLED if interrupted else RunStatus.FINISHED
        close_parent(client, parent, RunStatus.to_string(status))
    if not interrupted and not unwritten:  # the summary reads MLflow: only once it holds everything
        log.info("\n%s", summary_text(client, spec.name))
    end = LaunchEnd(interrupted=interrupted, unwritten=unwritten, refused=refused, failed=failed)
    return launch_outcome(spec.name, end, masked(spec.tracking.uri), str(store.unwritten_path))
