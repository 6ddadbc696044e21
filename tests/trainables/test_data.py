"""Digits splits: fixed test set, seeded train/val, nested subsets, label noise on train only."""

from __future__ import annotations

import torch

from trainables.data import load


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
