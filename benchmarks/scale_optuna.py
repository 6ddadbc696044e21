"""Optuna's cost as a study grows: fishtune's searcher on the study's real storage, no Ray.

The study's storage (``runs/<study>/optuna.db``, SQLite, as ``fishtune run`` makes it) is
filled with finished trials as Tune would leave them (searched values, one intermediate value
per epoch, the user attributes fishtune sets, 1 in 10 PRUNED as a diverged trial), up to each
size; there, ``cycles`` times, the oldest of ``running`` running trials gets its per-epoch
results (``on_trial_result``, which reports an intermediate value) and its end
(``on_trial_complete``, Optuna's tell), and a new trial is suggested (Optuna's ask, where TPE
reads the whole history).

The storage is the spec's ``search.storage``: by default the study folder's SQLite file, or
``journal`` (Optuna's ``JournalStorage`` on the study folder's log file).
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState, create_trial
from scale_probes import summary

from study.searcher import ATTRS, build_searcher, distribution
from study.spec import StudySpec
from study.store import StudyStore
from trainables.report import OUTCOME, Outcome


def objective(params: dict[str, float]) -> float:
    """A smooth val_accuracy over log lr and log coefficient, best near lr 0.02, coef 1e-3."""
    lr, coef = params["train.lr"], params["penalty.coef"]
    return 0.95 - 0.1 * math.log10(lr / 0.02) ** 2 - 0.05 * math.log10(coef / 1e-3) ** 2


def finished_trials(spec: StudySpec, count: int, epochs: int, rng: random.Random) -> list[Any]:
    space = {name: distribution(d) for name, d in spec.search.searched.items()}
    out = []
    for i in range(count):
        params = {name: math.exp(rng.uniform(math.log(d.low), math.log(d.high))) for name, d in space.items()}
        value = objective(params)
        pruned = i % 10 == 9
        attrs = {ATTRS[0]: f"fill{i}", ATTRS[1]: [f"fill{i}"], ATTRS[2]: "fishtune.trial_id"}
        attrs[ATTRS[3]] = Outcome.DIVERGED.value if pruned else Outcome.COMPLETED.value
        out.append(
            create_trial(
                state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
                value=None if pruned else value,
                params=params,
                distributions=space,
                intermediate_values={e: value * e / epochs for e in range(1, epochs + 1)},
                user_attrs=attrs,
            )
        )
    return out


def optuna_growth(
    spec: StudySpec, work: Path, sizes: list[int], running: int, cycles: int, epochs: int
) -> dict[str, Any]:
    store = StudyStore(work, spec.name)
    store.root.mkdir(parents=True, exist_ok=True)
    searcher = build_searcher(spec.search, spec.name, store.storage_url(spec.search.storage))
    study = searcher._ot_study  # the searcher's own study object, on its storage
    assert study is not None
    rng = random.Random(0)
    active: deque[str] = deque()
    made = 0

    def ask() -> float:
        nonlocal made
        trial_id = f"bench{made:06d}"
        made += 1
        began = time.perf_counter()
        searcher.suggest(trial_id)
        active.append(trial_id)
        return time.perf_counter() - began

    for _ in range(running):
        ask()
    rows = []
    for size in sorted(sizes):
        finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        began = time.perf_counter()
        if size > finished:
            study.add_trials(finished_trials(spec, size - finished, epochs, rng))
        fill_s = time.perf_counter() - began
        suggest, report, complete = [], [], []
        for _ in range(cycles):
            trial_id = active.popleft()
            params = searcher._ot_trials[trial_id].params
            value = objective(params)
            result: dict[str, Any] = {}
            for epoch in range(1, epochs + 1):
                result = {spec.search.metric: value * epoch / epochs, "training_iteration": epoch}
                result[OUTCOME] = (Outcome.COMPLETED if epoch == epochs else Outcome.RUNNING).value
                began = time.perf_counter()
                searcher.on_trial_result(trial_id, result)
                report.append(time.perf_counter() - began)
            began = time.perf_counter()
            searcher.on_trial_complete(trial_id, result=result)
            complete.append(time.perf_counter() - began)
            suggest.append(ask())
        total = len(study.get_trials(deepcopy=False))
        rows.append({"finished": size, "trials_in_storage": total, "fill_s": fill_s,
                     "suggest_s": summary(suggest), "report_s": summary(report), "complete_s": summary(complete)})  # fmt: skip
        print(f"optuna: {size} finished: suggest median {rows[-1]['suggest_s']['median']:.3f} s", flush=True)
    return {"sampler": type(searcher._sampler).__name__, "storage": spec.search.storage or "sqlite", "running": running, "cycles": cycles,
            "epochs": epochs, "optuna": optuna.__version__, "sizes": rows}  # fmt: skip
