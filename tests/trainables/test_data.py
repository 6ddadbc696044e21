"""Data: the registry, digits and CIFAR splits (CIFAR from tiny archives in the official format),
ensure_available, data.augment. The archive machinery itself is tested in test_archives.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables.config import DataConfig, TrialConfig
from trainables.data import augment, dataset_info, ensure_available, load
from trainables.loop import train
from trainables.schema import ConfigError

from .cifar_archive import TinyArchive, cifar_splits, installed_cifar10, placed, write_cifar100


def split(**kw):  # type: ignore[no-untyped-def]
    args = {"val_fraction": 0.1, "label_noise": 0.0, "seed": 0, "cache_dir": "unused"} | kw
    return load("digits", **args)


def test_test_set_is_fixed_and_disjoint_from_train_and_val() -> None:
    a, b = split(seed=0), split(seed=1)
    assert len(a.train_y) + len(a.val_y) + len(a.test_y) == 1797 and len(a.test_y) == 359
    torch.testing.assert_close(a.test_y, b.test_y)  # same test labels in the same order
    assert not torch.equal(a.val_y, b.val_y)  # the train/val split follows data.seed
    raw = load("digits", val_fraction=0.1, label_noise=0.0, seed=0, cache_dir="")
    assert raw.train_x.shape[1:] == (1, 8, 8)
    assert abs(float(a.train_x.mean())) < 1e-5 and abs(float(a.train_x.std()) - 1) < 1e-2  # standardised on train


def test_train_size_is_a_nested_seeded_subset() -> None:
    full, small, smaller = split(), split(train_size=300), split(train_size=100)
    assert len(small.train_y) == 300 and len(smaller.train_y) == 100
    torch.testing.assert_close(small.train_y[:100], smaller.train_y)
    assert len(small.val_y) == len(full.val_y)


def test_label_noise_corrupts_a_seeded_fraction_of_train_labels_only() -> None:
    clean, noisy = split(), split(label_noise=0.3)
    changed = (clean.train_y != noisy.train_y).nonzero().squeeze(1)
    assert torch.equal(changed, noisy.noisy_indices)
    assert len(changed) == round(0.3 * len(clean.train_y))
    torch.testing.assert_close(clean.test_y, noisy.test_y)
    torch.testing.assert_close(clean.val_y, noisy.val_y)


# --- CIFAR from tiny archives ------------------------------------------------------------------


@pytest.fixture
def tiny10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TinyArchive:
    return installed_cifar10(tmp_path, monkeypatch)


def unit(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32) / 255


def test_cifar10_keeps_the_official_test_batch_and_standardises_on_train(tiny10: TinyArchive, tmp_path: Path) -> None:
    placed(tiny10, tmp_path / "cache")
    s = cifar_splits("cifar10", tmp_path / "cache")
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (90, 10, 20) and s.num_classes == 10
    assert s.train_x.shape[1:] == (3, 32, 32) and s.train_x.dtype == torch.float32
    order = np.random.default_rng(0).permutation(100)  # val = the first 10% of data.seed's order
    train = unit(tiny10.train_x[order[10:]])
    mean, std = train.mean((0, 2, 3), keepdim=True), train.std((0, 2, 3), keepdim=True, unbiased=False)
    torch.testing.assert_close(s.train_x, (train - mean) / std, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.val_x, (unit(tiny10.train_x[order[:10]]) - mean) / std, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.test_x, (unit(tiny10.test_x) - mean) / std, atol=1e-4, rtol=1e-4)  # not re-split
    assert torch.equal(s.test_y, torch.as_tensor(tiny10.test_y))
    assert torch.equal(s.val_y, torch.as_tensor(tiny10.train_y[order[:10]]))
    other = cifar_splits("cifar10", tmp_path / "cache", seed=1)
    assert torch.equal(other.test_y, s.test_y) and not torch.equal(other.val_y, s.val_y)
    assert torch.equal(cifar_splits("cifar10", tmp_path / "cache").val_x, s.val_x)  # same seed, same split


def test_cifar100_uses_the_fine_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = write_cifar100(tmp_path)
    tiny.install(monkeypatch, "cifar100")
    s = cifar_splits("cifar100", placed(tiny, tmp_path / "cache").parent)
    assert s.num_classes == 100 and (len(s.train_y), len(s.val_y), len(s.test_y)) == (90, 10, 20)
    assert torch.equal(s.test_y, torch.as_tensor(tiny.test_y))
    pool = torch.cat([s.train_y, s.val_y]).sort().values
    assert torch.equal(pool, torch.as_tensor(tiny.train_y).sort().values)
    assert tiny.coarse_train_y is not None and not torch.equal(pool, torch.as_tensor(tiny.coarse_train_y).sort().values)


def test_ensure_available_has_nothing_to_do_for_digits() -> None:
    ensure_available("digits", "/nonexistent/never/created")
    assert not Path("/nonexistent").exists()


# --- data.augment --------------------------------------------------------------------------------


def test_augment_is_refused_for_digits(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data\.augment: must be false for digits"):
        DataConfig(name="digits", augment=True)
    DataConfig(name="cifar10", augment=True, cache_dir=str(tmp_path))


def test_augment_crops_and_flips_each_image_reproducibly() -> None:
    x = torch.randn(64, 3, 32, 32)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, augment(x, torch.Generator().manual_seed(1)))
    padded = F.pad(x, (4, 4, 4, 4))
    found = torch.full((64,), -1)
    for k in range(9 * 9 * 2):  # every (row shift, column shift, flip) candidate
        dy, dx, flip = k // 18, k // 2 % 9, k % 2
        crop = padded[:, :, dy : dy + 32, dx : dx + 32]
        crop = crop.flip(3) if flip else crop
        found[(crop == out).flatten(1).all(1)] = k
    assert (found >= 0).all()  # each output is a shifted (and maybe mirrored) input
    assert set((found % 2).tolist()) == {0, 1}  # both flipped and unflipped images
    assert len(set((found // 2).tolist())) > 20  # many different shifts


def test_the_train_loop_augments_training_batches_only_and_reproducibly(tiny10: TinyArchive, tmp_path: Path) -> None:
    placed(tiny10, tmp_path / "cache")
    spec: dict[str, Any] = {
        "data": {"name": "cifar10", "cache_dir": str(tmp_path / "cache"), "augment": True},
        "model": {"name": "mlp", "hidden": 16, "depth": 1},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.05},
        "fisher": {"samples": 8},
    }
    cfg = TrialConfig.from_mapping(spec)
    plain = TrialConfig.from_mapping({**spec, "data": {**spec["data"], "augment": False}})
    run = [list(train(c, torch.device("cpu"))) for c in (cfg, cfg, plain)]
    assert [r.metrics for r in run[0]] == [r.metrics for r in run[1]]  # seeded
    assert run[0][-1].curves == run[1][-1].curves
    assert run[0][-1].metrics != run[2][-1].metrics  # augmentation changed training
    assert run[0][0].curves["fisher_trace"][0] == run[2][0].curves["fisher_trace"][0]  # same un-augmented probe
    resumed = list(train(cfg, torch.device("cpu"), run[0][0].state))
    assert resumed[0].metrics == run[0][1].metrics and resumed[0].curves == run[0][1].curves


@pytest.mark.parametrize("name", ["digits", "mnist1d"])
def test_the_pool_each_data_set_declares_is_the_one_its_loader_gives(name: str, tmp_path: Path) -> None:
    info = dataset_info(name)
    assert len(info.loader(info, str(tmp_path)).y) == info.pool


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"train_size": 5000}, r"^data\.train_size: must be at most 1294 \(digits's 1438 examples less 144"),
        ({"val_fraction": 0.9999}, r"^data\.val_fraction: must be small enough to leave training examples"),
        ({"name": "mnist1d", "cache_dir": "rel/cache"}, r"^data\.cache_dir: must be an absolute path"),
    ],
)
def test_sizes_the_split_cannot_give_and_relative_caches_are_refused(data: dict, message: str) -> None:
    """train_size 5000 on digits was capped to 1294 without a word (a grid of sizes gave identical
    configurations); val_fraction 0.9999 left no training example and NaN inputs; MNIST-1D was
    generated again into every trial's own working directory."""
    with pytest.raises(ConfigError, match=message):
        DataConfig(**data)
