"""The across-configuration statistics, the within-configuration permutations and Holm, by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from analysis.configurations import configuration_ids, deviations, group_means
from analysis.inference import holm
from analysis.stats import correlations, fisher_z_interval, spearman_permutation_p
from analysis.within import _within_permutations, association


def test_correlations_use_configuration_means() -> None:
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(8), 3)
    trace, accuracy = rng.lognormal(size=24), rng.normal(size=24)
    block = correlations(trace, accuracy, groups)
    x = np.log(trace).reshape(8, 3).mean(1)  # configuration means of log Tr(F)
    y = accuracy.reshape(8, 3).mean(1)
    assert block["n"] == 24 and block["n_configurations"] == 8
    assert block["spearman"]["r"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert block["kendall"]["p"] == pytest.approx(stats.kendalltau(x, y).pvalue)
    assert block["pearson"]["r"] == pytest.approx(stats.pearsonr(x, y).statistic)
    one_each = correlations(trace, accuracy, np.arange(24))  # one trial per configuration: the trial level
    assert one_each["spearman"]["r"] == pytest.approx(stats.spearmanr(trace, accuracy).statistic)


def test_spearman_p_is_the_exact_permutation_p_at_six_configurations() -> None:
    x, y = np.array([5.0, 3, 4, 1, 2, 0]), np.arange(6.0)
    observed = abs(stats.spearmanr(x, y).statistic)
    extreme = sum(abs(stats.spearmanr(np.array(p), y).statistic) >= observed - 1e-12 for p in itertools.permutations(x))
    assert spearman_permutation_p(x, y) == pytest.approx(extreme / 720)
    assert spearman_permutation_p(x, y) > stats.spearmanr(x, y).pvalue  # the t approximation is too liberal here


def test_constant_values_give_no_correlation_numbers() -> None:
    assert correlations(np.full(5, 3.0), np.linspace(0.5, 0.9, 5), np.arange(5)) == {"n": 5, "n_configurations": 5}


def test_intervals_need_enough_configurations() -> None:
    assert fisher_z_interval(0.5, 4, "kendall") == [None, None]
    assert None not in fisher_z_interval(0.5, 4, "spearman") + fisher_z_interval(0.5, 5, "kendall")
    assert fisher_z_interval(-1.0, 6, "spearman")[0] == -1.0  # a perfect r stays inside its interval


def test_configurations_ignore_the_seed_and_deviations_remove_their_means() -> None:
    import pandas as pd

    table = pd.DataFrame({"train.lr": [0.1, 0.1, 0.2, 0.2], "penalty.kind": ["fisher", "gp", "fisher", "fisher"]})
    assert list(configuration_ids(table, ["train.lr", "penalty.kind"])) == [0, 1, 2, 2]
    assert list(configuration_ids(table, [])) == [0, 0, 0, 0]
    values, groups = np.array([1.0, 3.0, 5.0, 10.0]), np.array([0, 0, 1, 1])
    np.testing.assert_allclose(group_means(values, groups), [2.0, 7.5])
    np.testing.assert_allclose(deviations(values, groups), [-1.0, 1.0, -2.5, 2.5])


def test_permutations_stay_within_configurations() -> None:
    groups = np.array([2, 0, 1, 0, 2, 2, 1])
    perms = _within_permutations(groups, 200, np.random.default_rng(0))
    assert (groups[perms] == groups).all()
    assert all(sorted(p) == list(range(7)) for p in perms)
    assert len({tuple(p) for p in perms}) > 20


def test_within_configuration_needs_replicas_and_sees_a_within_effect() -> None:
    groups = np.repeat(np.arange(5), 4)
    rng = np.random.default_rng(1)
    noise = rng.normal(size=20)
    trace = np.exp(np.repeat(np.arange(5.0), 4) + noise)  # configurations differ a lot
    accuracy = np.repeat(rng.normal(size=5), 4) - 0.1 * noise  # within: higher Tr(F), lower accuracy
    block = association(trace, accuracy, groups)
    assert block["r"] == pytest.approx(-1.0) and block["p"] < 0.001 and block["n_configurations"] == 5
    refused = association(trace, accuracy, np.arange(20))
    assert refused["n_configurations"] == 0 and "2 or more replicas" in refused["message"]


def test_holm() -> None:
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([]) == []


def test_an_unreplicated_study_keeps_the_within_keys_as_none() -> None:
    block = association(np.array([1.0, 2.0, 3.0]), np.array([0.9, 0.8, 0.7]), np.array([0, 1, 2]))
    assert block["r"] is None and block["p"] is None and block["ci95"] == [None, None]
    assert "replicas" in block["message"] and block["n_configurations"] == 0
