"""Optuna behind Ray Tune: the search space, the sampler and the trial outcomes it is told.

Outcomes (design.md §4): a completed trial is COMPLETE with its last objective; an
early-stopped (ASHA) or diverged trial is PRUNED, so TPE learns from its intermediate values
without mistaking a truncated run for a finished one (Ray's OptunaSearch would say COMPLETE);
a failed trial (an error in Ray, or a last report of outcome ``failed`` from the trainable) is
FAIL, and that report's placeholder objective is not told as an intermediate value. Replicated
seeds wrap the searcher in a ``Repeater``: Optuna sees one trial per configuration, valued at
the replicas' mean, in the state of its worst replica.

Every Optuna trial carries user attributes (:data:`ATTRS`): its Ray trial id(s), the MLflow tag
that finds their child runs, its outcome, and for replicated seeds each seed's objective.

Resume after a killed driver: Tune's saved state (and this searcher's, saved with it) can be
older than the Optuna storage, which is written at once. A trial Optuna already holds as
finished is not told again; an Optuna trial that was asked after the last save (RUNNING, known
to no Tune trial) is handed to the next suggestion instead of asking a new one, so that the
same configuration runs and the study keeps no trial RUNNING forever. Such trials are looked
for once per launch (and resume), at its first suggestion.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.search import Repeater, Searcher
from ray.tune.search.optuna import OptunaSearch

from study.mlflow_study import TRIAL_ID
from study.optuna_storage import open_storage
from study.spec import Domain, SearchSpec
from trainables.report import OUTCOME, Outcome, reported_outcome

log = logging.getLogger(__name__)

RAY_TRIAL_ID = "fishtune.ray_trial_id"  # the Ray trial the Optuna trial was asked for
RAY_TRIAL_IDS = "fishtune.ray_trial_ids"  # every Ray trial of the configuration (one per seed)
MLFLOW_RUN_TAG = "fishtune.mlflow_run_tag"  # the MLflow tag whose values are those ids
OUTCOME_ATTR = "fishtune.outcome"
SEEDS = "fishtune.seeds"  # replicated configurations: the seeds, in replica order
SEED_VALUES = "fishtune.seed_values"  # … and each seed's objective (None: it reported none)
ATTRS = (RAY_TRIAL_ID, RAY_TRIAL_IDS, MLFLOW_RUN_TAG, OUTCOME_ATTR, SEEDS, SEED_VALUES)


def distribution(domain: Domain) -> BaseDistribution:
    lo_hi = domain.values
    if domain.kind == "loguniform":
        return FloatDistribution(float(lo_hi[0]), float(lo_hi[1]), log=True)
    if domain.kind == "uniform":
        return FloatDistribution(float(lo_hi[0]), float(lo_hi[1]))
    if domain.kind == "int":
        return IntDistribution(int(lo_hi[0]), int(lo_hi[1]))
    return CategoricalDistribution(list(domain.values))


def sampler(search: SearchSpec, launch: int = 1) -> optuna.samplers.BaseSampler:
    """The spec's sampler for the study's ``launch``-th launch.

    Random and TPE (whose first 10 trials are random) draw from their seed's stream from its
    start: seeded with ``search.seed`` again, a launch that extends a study (``fishtune run
    --num-samples N``) proposed again exactly what the first launch had, duplicate
    configurations that inflate n. Later launches take a seed derived from (search.seed,
    launch); the first keeps ``search.seed``, so a study is as reproducible as before. QMC
    continues its sequence from the study's trial count and the grid sampler skips visited
    points, so both keep ``search.seed``.
    """
    seed = search.seed
    if launch > 1:
        seed = int(np.random.SeedSequence([search.seed, launch]).generate_state(1)[0])
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=search.seed, scramble=True)
    if search.sampler == "grid":
        grid = {name: list(d.values) for name, d in search.searched.items()}
        return optuna.samplers.GridSampler(grid, seed=search.seed)
    return optuna.samplers.TPESampler(seed=seed)


class FishtuneOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna PRUNED for early-stopped and diverged trials, FAIL for
    failed ones, labels each Optuna trial with its Ray trial, and survives a resume whose saved
    state is older than the Optuna storage (module docstring)."""

    # The Optuna storage ids of the orphaned trials (see _orphaned_trial_ids) not handed out
    # yet; None until this launch's first suggest looks for them.
    _orphans: deque[int] | None = None

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._ot_trials and self._ot_study is not None:
            if self._orphans is None:
                self._orphans = deque(self._orphaned_trial_ids())
            if self._orphans:
                orphan = optuna.Trial(self._ot_study, self._orphans.popleft())
                log.info(
                    "Optuna trial %d, asked before the driver stopped, runs as Ray trial %s", orphan.number, trial_id
                )
                self._ot_trials[trial_id] = orphan
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self.set_user_attrs(trial_id, {RAY_TRIAL_ID: trial_id, RAY_TRIAL_IDS: [trial_id], MLFLOW_RUN_TAG: TRIAL_ID})
        return config

    def _orphaned_trial_ids(self) -> list[int]:
        """The RUNNING Optuna trials that no Ray trial of this searcher holds, oldest first.

        One driver writes a study's storage at a time (a new launch needs the last one
        finished, and a new study folder does not join a shared storage's study of its name:
        :mod:`study.optuna_storage`), so such a trial was asked by a driver that died before
        Tune saved it. Every trial asked later in this launch is held, so the storage is read
        once per launch, not at every suggest (a read of all running trials costs as much as
        TPE's own arithmetic: ``benchmarks/README.md``).
        """
        assert self._ot_study is not None
        held = {t._trial_id for t in self._ot_trials.values()}  # Optuna's storage id: no public accessor
        running = self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return [frozen._trial_id for frozen in running if frozen._trial_id not in held]

    def restore(self, checkpoint_path: str) -> None:
        """Tune's resume: the saved trials, then a new look for orphans at the next suggest."""
        super().restore(checkpoint_path)
        self._orphans = None

    def set_user_attrs(self, trial_id: str, attrs: dict[str, Any]) -> bool:
        """Set user attributes on the trial's Optuna trial; False if Optuna holds it as finished."""
        trial = self._ot_trials[trial_id]
        try:
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
        except UpdateFinishedTrialError:
            return False
        return True

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if reported_outcome(result) is Outcome.FAILED or trial_id in self._completed_trials:
            return
        if trial_id not in self._ot_trials:
            log.warning("Ray trial %s is unknown to the Optuna searcher; its result is not told", trial_id)
            return
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            self._already_told(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        if trial_id not in self._ot_trials:
            log.warning("Ray trial %s is unknown to the Optuna searcher; its end is not told", trial_id)
            return
        outcome = Outcome.FAILED if error else reported_outcome(result) or Outcome.COMPLETED
        value = (result or {}).get(self.metric)
        if outcome is Outcome.COMPLETED and value is not None:
            state = TrialState.COMPLETE
        elif outcome is Outcome.FAILED:  # Ray's OptunaSearch would tell COMPLETE for any result with a value
            state, value = TrialState.FAIL, None
        else:
            state, value = TrialState.PRUNED, None
        self._completed_trials.add(trial_id)
        if not self.set_user_attrs(trial_id, {OUTCOME_ATTR: outcome.value}):
            self._already_told(trial_id)
            return
        assert self._ot_study is not None  # set up by set_search_properties
        try:
            self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
        except RuntimeError as exc:
            # GridSampler calls study.stop() after its last grid point, which raises outside
            # optimize(); Optuna has stored the trial's state by then (in a finally block).
            if "Study.stop" not in str(exc):
                raise

    def _already_told(self, trial_id: str) -> None:
        """Optuna holds the trial as finished: a driver killed after telling it, before Tune saved
        its state, left Tune to run it again. Optuna keeps what it was told first."""
        self._completed_trials.add(trial_id)
        log.info("Optuna trial %d (Ray trial %s) was already told its end", self._ot_trials[trial_id].number, trial_id)


class OutcomeRepeater(Repeater):
    """Ray's Repeater, telling the searcher the replicas' worst outcome besides their mean.

    Ray's own passes only ``{metric: mean}``, so a configuration with a diverged or failed
    replica would reach Optuna as COMPLETE. Here: any failed replica → FAIL; otherwise any
    replica that did not complete (diverged, stopped early) → PRUNED; else COMPLETE. Before the
    searcher is told, the Optuna trial gets every replica's Ray trial id, seed and objective.
    """

    seeds: list[int] | None = None  # unknown in a state pickled before it was kept (resumed after an upgrade)

    def __init__(self, searcher: FishtuneOptunaSearch, seeds: tuple[int, ...]) -> None:
        super().__init__(searcher, repeat=len(seeds), set_index=True)
        self.seeds = list(seeds)
        self._outcomes: dict[str, list[Outcome]] = {}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False, **kwargs: Any
    ) -> None:
        group = self._trial_id_to_group.get(trial_id)
        if group is None:  # Ray's Repeater raises KeyError here (ray-project/ray#11918)
            log.warning("Ray trial %s belongs to no replica group of the searcher; its end is not told", trial_id)
            return
        outcomes = self._outcomes.setdefault(group.primary_trial_id, [])
        outcomes.append(Outcome.FAILED if error else reported_outcome(result) or Outcome.COMPLETED)
        metric = self.searcher.metric
        value = (result or {}).get(metric)
        group.report(trial_id, np.nan if value is None else value)
        if not group.finished_reporting():
            return
        searcher = self.searcher
        assert isinstance(searcher, FishtuneOptunaSearch)
        scores = [None if np.isnan(s) else float(s) for s in group.scores()]
        # Ray's _TrialGroup keeps its trials in replica (seed) order; it has no public accessor.
        replicas: dict[str, Any] = {RAY_TRIAL_IDS: list(group._trials), SEED_VALUES: scores}
        if self.seeds is not None:
            replicas[SEEDS] = self.seeds
        searcher.set_user_attrs(group.primary_trial_id, replicas)  # False: already told, see below
        if Outcome.FAILED in outcomes:
            searcher.on_trial_complete(group.primary_trial_id, result=None, error=True)
            return
        outcome = Outcome.COMPLETED if all(o is Outcome.COMPLETED for o in outcomes) else Outcome.DIVERGED
        summary = {metric: float(np.nanmean(group.scores())), OUTCOME: outcome.value}
        searcher.on_trial_complete(group.primary_trial_id, result=summary, error=False)


def build_searcher(search: SearchSpec, study_name: str, storage_url: str, launch: int = 1) -> Searcher:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url)
    space = {name: distribution(d) for name, d in search.searched.items()}
    searcher = FishtuneOptunaSearch(
        space=space,
        metric=search.metric,
        mode=search.mode,
        sampler=sampler(search, launch),
        study_name=study_name,
        storage=storage,
    )
    if search.seeds:
        return OutcomeRepeater(searcher, seeds=search.seeds)
    return searcher
