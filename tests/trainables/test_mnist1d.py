"""MNIST-1D: generated offline, deterministic, cached per node, split like the other sets."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import mnist1d
from trainables.config import DataConfig
from trainables.data import load


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One generated cache for the module (a generation takes a few seconds)."""
    folder = tmp_path_factory.mktemp("mnist1d-cache")
    mnist1d.arrays(str(folder))
    return str(folder)


def test_the_generated_set_is_the_published_one(cache: str) -> None:
    """4,000 / 1,000 signals of length 40; the class counts of the test split are those of the
    package's default arguments (seed 42), the set its authors publish."""
    a = mnist1d.arrays(cache)
    assert a["train_x"].shape == (4000, 1, 40) and a["test_x"].shape == (1000, 1, 40)
    assert a["train_x"].dtype == np.float32 and a["train_y"].dtype == np.int64
    assert np.bincount(a["test_y"]).tolist() == [102, 104, 89, 106, 106, 98, 99, 96, 98, 102]
    assert (np.bincount(a["train_y"]) + np.bincount(a["test_y"]) == 500).all()  # 500 per class, shuffled


def test_generation_is_deterministic_and_leaves_the_global_generators_alone(cache: str) -> None:
    np.random.seed(7)
    random.seed(7)
    numpy_next, python_next = np.random.get_state()[1][:4].copy(), random.getstate()
    again = mnist1d.generate(mnist1d.GENERATOR)
    assert (np.random.get_state()[1][:4] == numpy_next).all() and random.getstate() == python_next
    cached = mnist1d.arrays(cache)
    for key in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(again[key], cached[key])


def test_a_node_generates_once_then_reads_its_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = mnist1d.arrays(str(tmp_path))
    assert mnist1d.cache_path(str(tmp_path)).is_file()

    def no_generation(arguments: dict) -> dict:
        raise AssertionError("generated again although the cache holds the set")

    monkeypatch.setattr(mnist1d, "generate", no_generation)
    np.testing.assert_array_equal(mnist1d.arrays(str(tmp_path))["train_x"], first["train_x"])


def test_an_unwritable_cache_still_gives_the_data(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert mnist1d.arrays(str(blocked / "cache"))["train_x"].shape == (4000, 1, 40)
    assert "cannot cache the data set" in caplog.text


def test_a_damaged_cache_is_generated_again_and_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """It was a hard error asking the user to delete the file, though the data are generated here."""
    path = mnist1d.cache_path(str(tmp_path))
    path.write_bytes(b"not an npz")
    assert mnist1d.arrays(str(tmp_path))["train_x"].shape == (4000, 1, 40)
    assert re.search(r"mnist1d\.[0-9a-f]{16}\.npz cannot be read .*generating it again", caplog.text)
    assert mnist1d.arrays(str(tmp_path))["train_y"].max() < 10 and path.stat().st_size > 100_000


def test_splits_the_test_set_fixed_and_the_validation_set_by_seed(cache: str) -> None:
    def splits(seed: int, noise: float = 0.0):  # type: ignore[no-untyped-def]
        return load("mnist1d", val_fraction=0.1, label_noise=noise, seed=seed, cache_dir=cache)

    a, b = splits(0), splits(1)
    assert a.train_x.shape == (3600, 1, 40) and a.val_x.shape == (400, 1, 40) and a.test_x.shape == (1000, 1, 40)
    assert torch.equal(a.test_y, b.test_y)  # the same test signals, standardised with each train split's statistics
    torch.testing.assert_close(a.test_x, b.test_x, rtol=0, atol=0.05)
    assert not torch.equal(a.val_y, b.val_y)
    assert a.train_x.mean().abs() < 1e-5 and (a.train_x.std() - 1).abs() < 1e-3  # standardised on train
    noisy = splits(0, noise=0.25)
    assert len(noisy.noisy_indices) == 900
    assert (noisy.train_y[noisy.noisy_indices] != a.train_y[noisy.noisy_indices]).all()


def test_the_spec_takes_mnist1d_with_its_models(cache: str) -> None:
    config = DataConfig(name="mnist1d", cache_dir=cache)
    assert config.load(torch.device("cpu")).num_classes == 10
