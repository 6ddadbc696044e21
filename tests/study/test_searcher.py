"""What Optuna is told for each trial outcome (design.md §4)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from study.searcher import build_searcher
from study.spec import parse_spec

SPEC = """
name: s
model: {name: mlp}
search:
  space: {train.lr: {grid: [0.01, 0.1]}}
  sampler: grid
  num_samples: 2
"""


def searcher_and_url(tmp_path: Path):  # type: ignore[no-untyped-def]
    spec = parse_spec(yaml.safe_load(SPEC))
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
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
def test_outcomes_map_to_optuna_states(tmp_path: Path, outcome: str, state: optuna.trial.TrialState) -> None:
    searcher, url = searcher_and_url(tmp_path)
    for trial_id in ("a", "b"):  # the second completion exhausts the grid: GridSampler calls study.stop()
        assert searcher.suggest(trial_id) is not None
        result = {"val_accuracy": 0.5, "training_iteration": 1, "fishtune_outcome": outcome}
        searcher.on_trial_result(trial_id, result)
        searcher.on_trial_complete(trial_id, result)
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert [t.state for t in trials] == [state, state]
    assert all(t.intermediate_values == {1: 0.5} for t in trials)


def test_failed_trial_is_fail(tmp_path: Path) -> None:
    searcher, url = searcher_and_url(tmp_path)
    searcher.suggest("a")
    searcher.on_trial_complete("a", None, error=True)
    assert optuna.load_study(study_name="s", storage=url).trials[0].state == optuna.trial.TrialState.FAIL


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
    tmp_path: Path, second: dict | None, state: optuna.trial.TrialState
) -> None:
    spec = parse_spec(yaml.safe_load(SEEDED))
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = build_searcher(spec.search, "s", url)
    searcher.set_search_properties("val_accuracy", "max", {})
    configs = [searcher.suggest(t) for t in ("a", "b")]
    assert [c["__trial_index__"] for c in configs] == [0, 1] and configs[0]["train.lr"] == configs[1]["train.lr"]
    searcher.on_trial_complete("a", {"val_accuracy": 0.8, "fishtune_outcome": "completed"})
    if second is None:
        searcher.on_trial_complete("b", None, error=True)
    else:
        searcher.on_trial_complete("b", {"val_accuracy": 0.6, **second})
    (trial,) = optuna.load_study(study_name="s", storage=url).trials
    assert trial.state == state
    if state == optuna.trial.TrialState.COMPLETE:
        assert trial.value == pytest.approx(0.7)
