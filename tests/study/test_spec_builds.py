"""Parse once: a spec load builds each distinct model once; the driver reads a trial's params
without building any."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from study.spec import load_spec, parse_spec
from trainables.config import SEEDS_KEY, TRIAL_INDEX_KEY, TrialConfig, check_fits
from trainables.models import MODELS, ModelEntry

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[tuple[str, Any]]]:
    """Every model built through the registry, counted by (name, options)."""
    counts: Counter[tuple[str, Any]] = Counter()
    for name, entry in list(MODELS.items()):

        def counting(options: Any, shape: tuple[int, ...], classes: int, _name: str = name, _entry: ModelEntry = entry):
            counts[(_name, options)] += 1
            return _entry.build(options, shape, classes)

        monkeypatch.setitem(MODELS, name, ModelEntry(counting, entry.options))
    check_fits.cache_clear()  # a model checked by an earlier test would not be built again
    yield counts
    check_fits.cache_clear()


def test_table1_spec_builds_its_model_once(builds: Counter[tuple[str, Any]]) -> None:
    spec = load_spec(ROOT / "studies" / "paper-table1-wrn-cifar100-lr.yaml")  # 7 searched learning rates
    assert len(spec.search.space["train.lr"].values) == 7
    assert list(builds.values()) == [1]


def test_searched_model_option_builds_each_distinct_model_once(builds: Counter[tuple[str, Any]]) -> None:
    spec = parse_spec(
        yaml.safe_load(
            """
name: widths
model: {name: mlp, hidden: 32}
penalty: {kind: vcl, coef: 0.1}
search:
  space:
    model.hidden: {grid: [16, 32, 64]}
    penalty.coef: {loguniform: [1.0e-3, 1.0]}
    train.lr: {choice: [0.01, 0.1]}
"""
        )
    )
    assert sorted(options.hidden for _, options in builds) == [16, 32, 64]
    assert set(builds.values()) == {1}
    assert spec.search.space["model.hidden"].values == (16, 32, 64)  # 32 is also the base config's


def test_a_model_that_does_not_fit_is_still_refused_on_every_load(builds: Counter[tuple[str, Any]]) -> None:
    text = "name: x\nmodel: {name: simple_cnn, padding: paper}\nsearch: {space: {train.lr: {choice: [0.1]}}}\n"
    for _ in range(2):  # a failure is not cached as a success
        with pytest.raises(ValueError, match="16 px"):
            parse_spec(yaml.safe_load(text))
    assert sum(builds.values()) == 2


def test_driver_reads_a_trials_params_without_building_a_model(builds: Counter[tuple[str, Any]]) -> None:
    spec = load_spec(ROOT / "studies" / "paper-table1-wrn-cifar100-lr.yaml")
    builds.clear()
    ray_config = spec.trial.flat() | {"train.lr": 0.1, SEEDS_KEY: [7, 8], TRIAL_INDEX_KEY: 1}
    for _ in range(3):  # what the progress printer and the MLflow callback do for each trial
        flat = TrialConfig.from_tune(ray_config).flat()
    assert sum(builds.values()) == 0
    assert flat == spec.trial.flat() | {"train.lr": 0.1, "train.seed": 8}
