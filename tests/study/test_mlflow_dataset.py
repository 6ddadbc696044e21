"""The dataset input a trial's MLflow run records: its sizes are those of the splits the trial
trains on (both come from trainables.data.split_sizes)."""

from __future__ import annotations

import json

import pytest

from study.mlflow_dataset import dataset_record
from trainables.config import DataConfig
from trainables.data import load


@pytest.mark.parametrize(("val_fraction", "train_size"), [(0.1, None), (0.25, None), (0.1, 300), (0.5, 719)])
def test_recorded_sizes_are_the_loaded_splits(val_fraction: float, train_size: int | None) -> None:
    """719: the most training examples val_fraction 0.5 leaves of digits' 1438 (more is refused)."""
    data = DataConfig(val_fraction=val_fraction, train_size=train_size)
    profile = json.loads(dataset_record(data).profile)
    splits = load(data.name, val_fraction=val_fraction, label_noise=0.0, seed=0, cache_dir="", train_size=train_size)
    assert (profile["train"], profile["val"], profile["test"]) == (
        len(splits.train_y),
        len(splits.val_y),
        len(splits.test_y),
    )
