"""Optuna behind Ray Tune: the search space, the sampler and the trial outcomes it is told.

Outcomes (design.md §4): a completed trial is COMPLETE with its last objective; an
early-stopped (ASHA) or diverged trial is PRUNED, so TPE learns from its intermediate values
without mistaking a truncated run for a finished one (Ray's OptunaSearch would say COMPLETE);
a failed trial (an error in Ray, or a last report of outcome ``failed`` from the trainable) is
FAIL, and that report's placeholder objective is not told as an intermediate value. Replicated seeds wrap the searcher in a ``Repeater``: Optuna sees one
trial per configuration, valued at the replicas' mean, in the state of its worst replica.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from ray.tune.search import Repeater, Searcher
from ray.tune.search.optuna import OptunaSearch

from study.spec import Domain, SearchSpec
from trainables.report import OUTCOME, Outcome, reported_outcome


def distribution(domain: Domain) -> BaseDistribution:
    lo_hi = domain.values
    if domain.kind == "loguniform":
        return FloatDistribution(float(lo_hi[0]), float(lo_hi[1]), log=True)
    if domain.kind == "uniform":
        return FloatDistribution(float(lo_hi[0]), float(lo_hi[1]))
    if domain.kind == "int":
        return IntDistribution(int(lo_hi[0]), int(lo_hi[1]))
    return CategoricalDistribution(list(domain.values))


def sampler(search: SearchSpec) -> optuna.samplers.BaseSampler:
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    if search.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=search.seed, scramble=True)
    if search.sampler == "grid":
        grid = {name: list(d.values) for name, d in search.searched.items()}
        return optuna.samplers.GridSampler(grid, seed=search.seed)
    return optuna.samplers.TPESampler(seed=search.seed)


class FishtuneOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna PRUNED for early-stopped and diverged trials, FAIL for failed ones."""

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if reported_outcome(result) is not Outcome.FAILED:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        outcome = reported_outcome(result)
        if outcome is Outcome.FAILED:  # Ray's OptunaSearch would tell COMPLETE for any result with a value
            result, error = None, True
        if error or outcome in (None, Outcome.COMPLETED) or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        assert self._ot_study is not None  # set up by set_search_properties
        self._completed_trials.add(trial_id)
        try:
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        except RuntimeError as exc:
            # GridSampler calls study.stop() after its last grid point, which raises outside
            # optimize(); Optuna has stored the trial's state by then (in a finally block).
            if "Study.stop" not in str(exc):
                raise


class OutcomeRepeater(Repeater):
    """Ray's Repeater, telling the searcher the replicas' worst outcome besides their mean.

    Ray's own passes only ``{metric: mean}``, so a configuration with a diverged or failed
    replica would reach Optuna as COMPLETE. Here: any failed replica → FAIL; otherwise any
    replica that did not complete (diverged, stopped early) → PRUNED; else COMPLETE.
    """

    def __init__(self, searcher: Searcher, repeat: int) -> None:
        super().__init__(searcher, repeat=repeat, set_index=True)
        self._outcomes: dict[str, list[Outcome]] = {}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False, **kwargs: Any
    ) -> None:
        group = self._trial_id_to_group[trial_id]
        outcomes = self._outcomes.setdefault(group.primary_trial_id, [])
        outcomes.append(Outcome.FAILED if error else reported_outcome(result) or Outcome.COMPLETED)
        metric = self.searcher.metric
        group.report(trial_id, (result or {}).get(metric, np.nan))
        if not group.finished_reporting():
            return
        if Outcome.FAILED in outcomes:
            self.searcher.on_trial_complete(group.primary_trial_id, result=None, error=True)
            return
        outcome = Outcome.COMPLETED if all(o is Outcome.COMPLETED for o in outcomes) else Outcome.DIVERGED
        summary = {metric: float(np.nanmean(group.scores())), OUTCOME: outcome.value}
        self.searcher.on_trial_complete(group.primary_trial_id, result=summary, error=False)


def build_searcher(search: SearchSpec, study_name: str, storage_url: str) -> Searcher:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(storage_url)
    space = {name: distribution(d) for name, d in search.searched.items()}
    searcher: Searcher = FishtuneOptunaSearch(
        space=space,
        metric=search.metric,
        mode=search.mode,
        sampler=sampler(search),
        study_name=study_name,
        storage=storage,
    )
    if search.seeds:
        searcher = OutcomeRepeater(searcher, repeat=len(search.seeds))
    return searcher
