"""The Tune experiment of one launch: a new :class:`~ray.tune.Tuner`, or one restored from the
state an interrupted launch saved."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler

from study.searcher import build_searcher
from study.spec import StudySpec
from study.store import Launch, StudyStore
from trainables.config import SEEDS_KEY
from trainables.train import fishtune_trainable

# Retries of a trial from its last checkpoint after a lost worker or node, or a transient error
# (trainables/train.py); preempted nodes do not count, errors in the trial's code are not retried.
MAX_FAILURES = 3
# Tune's experiment state can lag a trial by up to two checkpoints (it is forced every second
# one), and a driver killed then leaves that state behind: the checkpoint it names must still
# exist when `fishtune resume` restores from it, so three are kept, not two.
CHECKPOINTS_KEPT = 3


def build_tuner(spec: StudySpec, store: StudyStore, launch: Launch, callbacks: list[tune.Callback]) -> tune.Tuner:
    """A new experiment that runs ``launch.num_samples`` trials against the study's Optuna storage."""
    return tune.Tuner(
        trainable(spec),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            search_alg=build_searcher(spec.search, spec.name, store.storage_url(spec.search.storage), launch.index),
            scheduler=scheduler(spec),
            num_samples=launch.num_samples,
            max_concurrent_trials=spec.search.max_concurrent,
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=launch.experiment,
            storage_path=launch.results,
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            verbose=0,
            callbacks=callbacks,
        ),
    )


def restore_tuner(spec: StudySpec, path: str) -> tune.Tuner:
    return tune.Tuner.restore(path, trainable(spec), resume_unfinished=True, param_space=param_space(spec))


def restored_callbacks(tuner: tune.Tuner) -> list[tune.Callback]:
    """The callbacks a restored tuner unpickled from the saved state (they hold what the study's
    MLflow queue must still flush).

    Tune has no public accessor for them (ray-project/ray#41364, open): this reads the private
    ``TunerInternal`` of a Tuner outside Ray Client mode (Ray 2.60).
    """
    internal = getattr(tuner, "_local_tuner", None)
    if internal is None:
        raise RuntimeError("this Ray version keeps no local TunerInternal: cannot reach the restored callbacks")
    return list(internal.get_run_config().callbacks or [])


def param_space(spec: StudySpec) -> dict[str, object]:
    space: dict[str, object] = dict(spec.trial.flat())
    if spec.search.seeds:
        space[SEEDS_KEY] = list(spec.search.seeds)
    return space


def trainable(spec: StudySpec) -> Callable[..., Any]:
    return tune.with_resources(fishtune_trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def scheduler(spec: StudySpec) -> ASHAScheduler | None:
    asha = spec.search.scheduler
    if asha is None:
        return None
    return ASHAScheduler(
        time_attr="training_iteration",  # one report per epoch: grace_period and max_t are epochs
        metric=spec.search.metric,
        mode=spec.search.mode,
        max_t=spec.trial.train.epochs,
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
    )
