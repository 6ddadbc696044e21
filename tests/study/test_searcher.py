"""What Optuna is told for each trial outcome (design.md §4), on the SQLite and the journal storage."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from ray.tune.search import Searcher

from study.optuna_storage import open_storage
from study.searcher import (
    MLFLOW_RUN_TAG,
    OUTCOME_ATTR,
    RAY_TRIAL_ID,
    RAY_TRIAL_IDS,
    SEED_VALUES,
    SEEDS,
    build_searcher,
    sampler,
)
from study.spec import parse_spec

SPEC = """
name: s
model: {name: mlp}
search:
  space: {train.lr: {grid: [0.01, 0.1]}}
  sampler: grid
  num_samples: 2
"""


@pytest.fixture(params=["sqlite", "journal"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The study's Optuna storage: the default SQLite file, or ``search.storage: journal``'s file."""
    return (
        f"sqlite:///{tmp_path / 'optuna.db'}"
        if request.param == "sqlite"
        else f"journal:///{tmp_path / 'optuna.journal'}"
    )


def stored(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="s", storage=open_storage(url)).trials


def searcher_and_url(url: str):  # type: ignore[no-untyped-def]
    spec = parse_spec(yaml.safe_load(SPEC))
    searcher = build_searcher(spec.search, "s", url)
    searcher.set_search_properties("val_accuracy", "max", {})
    return searcher, url


@pytest.mark.parametrize(
    ("outcome", "state"),
    [
        ("completed", optuna.trial.TrialState.COMPLETE),
        ("diverged", optuna.trial.TrialState.PRUNED),
        ("running", optuna.trial.TrialState.PRUNED),  # last report before ASHA stopped it
    ],
)
def test_outcomes_map_to_optuna_states(url: str, tmp_path: Path, outcome: str, state: optuna.trial.TrialState) -> None:
    searcher, url = searcher_and_url(url)
    for trial_id in ("a", "b"):  # the second completion exhausts the grid: GridSampler calls study.stop()
        assert searcher.suggest(trial_id) is not None
        result = {"val_accuracy": 0.5, "training_iteration": 1, "fishtune_outcome": outcome}
        searcher.on_trial_result(trial_id, result)
        searcher.on_trial_complete(trial_id, result)
    trials = stored(url)
    assert [t.state for t in trials] == [state, state]
    assert all(t.intermediate_values == {1: 0.5} for t in trials)


def test_failed_trial_is_fail(url: str, tmp_path: Path) -> None:
    searcher, url = searcher_and_url(url)
    searcher.suggest("a")
    searcher.on_trial_complete("a", None, error=True)
    assert stored(url)[0].state == optuna.trial.TrialState.FAIL


SEEDED = """
name: s
model: {name: mlp}
search:
  space: {train.lr: {grid: [0.01, 0.1]}, train.seed: {grid: [0, 1]}}
  sampler: grid
  num_samples: 4
"""


@pytest.mark.parametrize(
    ("second", "state"),
    [
        ({"fishtune_outcome": "completed"}, optuna.trial.TrialState.COMPLETE),
        ({"fishtune_outcome": "diverged"}, optuna.trial.TrialState.PRUNED),
        (None, optuna.trial.TrialState.FAIL),
    ],
)
def test_replicas_report_their_worst_outcome(
    url: str, tmp_path: Path, second: dict | None, state: optuna.trial.TrialState
) -> None:
    spec = parse_spec(yaml.safe_load(SEEDED))
    searcher = build_searcher(spec.search, "s", url)
    searcher.set_search_properties("val_accuracy", "max", {})
    configs = [searcher.suggest(t) for t in ("a", "b")]
    assert [c["__trial_index__"] for c in configs] == [0, 1] and configs[0]["train.lr"] == configs[1]["train.lr"]
    searcher.on_trial_complete("a", {"val_accuracy": 0.8, "fishtune_outcome": "completed"})
    if second is None:
        searcher.on_trial_complete("b", None, error=True)
    else:
        searcher.on_trial_complete("b", {"val_accuracy": 0.6, **second})
    (trial,) = stored(url)
    assert trial.state == state
    if state == optuna.trial.TrialState.COMPLETE:
        assert trial.value == pytest.approx(0.7)


def test_replicas_carry_their_ray_trials_seeds_and_values(url: str, tmp_path: Path) -> None:
    spec = parse_spec(yaml.safe_load(SEEDED))
    searcher = build_searcher(spec.search, "s", url)
    searcher.set_search_properties("val_accuracy", "max", {})
    searcher.suggest("a"), searcher.suggest("b")
    searcher.on_trial_complete("a", {"val_accuracy": 0.8, "fishtune_outcome": "completed"})
    searcher.on_trial_complete("b", {"val_accuracy": 0.6, "fishtune_outcome": "completed"})
    (trial,) = stored(url)
    assert trial.user_attrs == {
        RAY_TRIAL_ID: "a",
        RAY_TRIAL_IDS: ["a", "b"],
        MLFLOW_RUN_TAG: "fishtune.trial_id",
        OUTCOME_ATTR: "completed",
        SEEDS: [0, 1],
        SEED_VALUES: [0.8, 0.6],
    }


def test_every_optuna_trial_names_its_ray_trial_and_outcome(url: str, tmp_path: Path) -> None:
    searcher, url = searcher_and_url(url)
    searcher.suggest("a"), searcher.suggest("b")
    searcher.on_trial_complete("a", {"val_accuracy": 0.5, "fishtune_outcome": "diverged"})
    searcher.on_trial_complete("b", None, error=True)
    attrs = [t.user_attrs for t in stored(url)]
    assert attrs == [
        {RAY_TRIAL_ID: "a", RAY_TRIAL_IDS: ["a"], MLFLOW_RUN_TAG: "fishtune.trial_id", OUTCOME_ATTR: "diverged"},
        {RAY_TRIAL_ID: "b", RAY_TRIAL_IDS: ["b"], MLFLOW_RUN_TAG: "fishtune.trial_id", OUTCOME_ATTR: "failed"},
    ]


def restored(searcher: Searcher, snapshot: tuple[dict, Path], spec_text: str, url: str) -> Searcher:
    """A fresh searcher restored from a snapshot as Tune's SearchGenerator restores one: the
    wrappers' state, then the base searcher's file."""
    state, path = snapshot
    fresh = build_searcher(parse_spec(yaml.safe_load(spec_text)).search, "s", url)
    fresh.set_search_properties("val_accuracy", "max", {})
    if state:
        fresh.set_state(state)
    fresh.restore(str(path))
    return fresh


def snapshot(searcher: Searcher, path: Path) -> tuple[dict, Path]:
    searcher.save(str(path))
    return (searcher.get_state() if hasattr(searcher, "searcher") else {}), path


def done(result: float) -> dict:
    return {"val_accuracy": result, "training_iteration": 1, "fishtune_outcome": "completed"}


def test_resume_from_a_state_older_than_optuna_neither_crashes_nor_leaves_trials_running(
    url: str, tmp_path: Path
) -> None:
    """A driver killed after Tune's last save: trial a finished and b was asked since then."""
    searcher, url = searcher_and_url(url)
    searcher.suggest("a")
    saved = snapshot(searcher, tmp_path / "searcher.pkl")
    b_config = searcher.suggest("b")
    searcher.on_trial_result("a", done(0.5))
    searcher.on_trial_complete("a", done(0.5))

    searcher = restored(searcher, saved, SPEC, url)
    searcher.on_trial_result("a", done(0.4))  # Tune runs a again from its saved state
    searcher.on_trial_complete("a", done(0.4))
    assert searcher.suggest("c") == b_config  # b's Optuna trial, not a new one
    searcher.on_trial_complete("c", done(0.7))
    trials = stored(url)
    assert [(t.state, t.value) for t in trials] == [(optuna.trial.TrialState.COMPLETE, v) for v in (0.5, 0.7)]
    assert trials[1].user_attrs[RAY_TRIAL_ID] == "c"


def test_resume_of_replicas_from_an_older_state_runs_every_configuration_once(url: str, tmp_path: Path) -> None:
    spec = parse_spec(yaml.safe_load(SEEDED))
    searcher = build_searcher(spec.search, "s", url)
    searcher.set_search_properties("val_accuracy", "max", {})
    first = [searcher.suggest("a"), searcher.suggest("b")]
    saved = snapshot(searcher, tmp_path / "searcher.pkl")
    second = searcher.suggest("c")["train.lr"]
    searcher.on_trial_complete("a", done(0.8))
    searcher.on_trial_complete("b", done(0.6))

    searcher = restored(searcher, saved, SEEDED, url)
    searcher.on_trial_complete("a", done(0.8))
    searcher.on_trial_complete("b", done(0.6))
    searcher.on_trial_complete("gone", done(0.1))  # a Ray trial the searcher never saw: no KeyError
    replicas = [searcher.suggest("d"), searcher.suggest("e")]
    assert [c["train.lr"] for c in replicas] == [second, second] and [c["__trial_index__"] for c in replicas] == [0, 1]
    searcher.on_trial_complete("d", done(0.5))
    searcher.on_trial_complete("e", done(0.3))
    trials = stored(url)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert [t.value for t in trials] == [pytest.approx(0.7), pytest.approx(0.4)]
    assert {t.params["train.lr"] for t in trials} == {first[0]["train.lr"], second}
    assert trials[1].user_attrs[RAY_TRIAL_IDS] == ["d", "e"]


def test_replicas_restored_from_a_state_without_seeds_still_report(url: str, tmp_path: Path) -> None:
    """Tune unpickles the searcher on resume: a state saved before the seeds were kept lacks them."""
    spec = parse_spec(yaml.safe_load(SEEDED))
    searcher = build_searcher(spec.search, "s", url)
    searcher.set_search_properties("val_accuracy", "max", {})
    del searcher.__dict__["seeds"]
    searcher.suggest("a"), searcher.suggest("b")
    searcher.on_trial_complete("a", done(0.8))
    searcher.on_trial_complete("b", done(0.6))
    (trial,) = stored(url)
    assert trial.state == optuna.trial.TrialState.COMPLETE and SEEDS not in trial.user_attrs
    assert trial.user_attrs[SEED_VALUES] == [0.8, 0.6]


SEARCHED = """
name: s
model: {name: mlp}
search:
  space: {train.lr: {loguniform: [1.0e-3, 1.0e-1]}}
  sampler: random
  num_samples: 10
"""


def test_orphaned_trials_are_looked_for_once_per_launch(url: str, tmp_path: Path) -> None:
    """A trial a dead driver left RUNNING is taken at the launch's first suggest; one asked by
    someone else during the launch is not (the storage is not read again at every suggest),
    and the next launch takes it."""

    def launch() -> Searcher:
        searcher = build_searcher(parse_spec(yaml.safe_load(SEARCHED)).search, "s", url)
        searcher.set_search_properties("val_accuracy", "max", {})
        return searcher

    searcher = launch()
    space = {"train.lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)}
    other = optuna.load_study(study_name="s", storage=open_storage(url))
    left = other.ask(space)  # a driver that died after asking
    searcher = launch()
    assert searcher.suggest("a") == left.params
    late = other.ask(space)  # asked while this launch runs
    assert searcher.suggest("b") != late.params
    searcher.on_trial_complete("a", done(0.5)), searcher.on_trial_complete("b", done(0.6))
    assert launch().suggest("c") == late.params
    attrs = [t.user_attrs.get(RAY_TRIAL_ID) for t in stored(url)]
    assert attrs == ["a", "c", "b"]


LR = {"lr": optuna.distributions.FloatDistribution(0.001, 0.1, log=True)}


def draws(study: optuna.Study, chosen: optuna.samplers.BaseSampler, n: int = 3) -> list[float]:
    """``n`` trials asked of ``study`` with ``chosen`` as its sampler, each told 0.5."""
    study.sampler = chosen
    points = []
    for _ in range(n):
        trial = study.ask(LR)
        points.append(trial.params["lr"])
        study.tell(trial, 0.5)
    return points


@pytest.mark.parametrize("kind", ["random", "tpe"])
def test_a_launch_that_extends_a_study_does_not_propose_the_first_launchs_points_again(kind: str) -> None:
    """Each launch builds its sampler afresh: with search.seed again, random and TPE's random
    start-up drew the same stream from its start, so launch 2 repeated launch 1's points."""
    text = SPEC.replace("{train.lr: {grid: [0.01, 0.1]}}", "{train.lr: {loguniform: [0.001, 0.1]}}")
    search = parse_spec(yaml.safe_load(text.replace("sampler: grid", f"sampler: {kind}"))).search
    study = optuna.create_study(direction="maximize")
    first, second = draws(study, sampler(search, 1)), draws(study, sampler(search, 2))
    assert not set(first) & set(second)
    alone = draws(optuna.create_study(direction="maximize"), sampler(search, 1))
    assert first == alone  # the first launch is as reproducible as before
