"""Arms of penalty studies: the coefficient chosen on validation, Welch comparisons, Holm."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import names
from analysis.arms import arms_table, comparisons, study_arms
from analysis.inference import holm
from analysis.table import LR

COLUMNS = (names.FINAL_VAL_ACCURACY, names.FINAL_TEST_ACCURACY, names.BEST_TEST_ACCURACY, names.FISHER_PEAK)


def trials(rows: list[tuple]) -> pd.DataFrame:
    """(searched values..., val, test, peak) per completed trial; best test = test + 0.01."""
    frame = pd.DataFrame(rows, columns=["key", "train.seed", "val", "test", "peak"])
    return frame.assign(
        outcome=names.COMPLETED,
        **{
            names.FINAL_VAL_ACCURACY: frame["val"],
            names.FINAL_TEST_ACCURACY: frame["test"],
            names.BEST_TEST_ACCURACY: frame["test"] + 0.01,
            names.FISHER_PEAK: frame["peak"],
        },
    )


def penalty_study(val_by_coef: dict[float, tuple[float, float]]) -> pd.DataFrame:
    rows = [
        (coef, seed, val, test + 0.01 * seed, 50.0 + seed)
        for coef, (val, test) in val_by_coef.items()
        for seed in (0, 1, 2)
    ]
    return trials(rows).rename(columns={"key": "penalty.coef"})


def baseline_study() -> pd.DataFrame:
    rows = [
        (lr, seed, 0.9, 0.90 - 0.2 * (lr < 0.01) + 0.02 * seed, 100.0 * (1 + (lr < 0.01)))
        for lr in (0.04, 0.004)
        for seed in (0, 1, 2)
    ]
    return trials(rows).rename(columns={"key": "train.lr"})


PARAMS = {"penalty.kind": "fisher", "train.lr": "0.004", "penalty.coef": "0.01"}


def test_the_coefficient_is_chosen_on_mean_validation_accuracy_not_test() -> None:
    table = penalty_study({0.001: (0.80, 0.95), 0.01: (0.85, 0.70), 0.1: (0.70, 0.99)})
    (arm,) = study_arms(table, ["penalty.coef", "train.seed"], PARAMS)
    assert arm.label == "FP, lr 0.004" and arm.coef == 0.01 and arm.lr == 0.004
    assert len(arm.tried) == 3 and sorted(arm.runs["train.seed"]) == [0, 1, 2]
    assert set(arm.runs["penalty.coef"]) == {0.01}


def test_a_tie_on_validation_goes_to_the_smaller_coefficient() -> None:
    table = penalty_study({0.1: (0.85, 0.7), 0.001: (0.85, 0.6)})
    (arm,) = study_arms(table, ["penalty.coef", "train.seed"], PARAMS)
    assert arm.coef == 0.001


def test_an_unpenalised_study_gives_one_arm_per_learning_rate() -> None:
    arms = study_arms(baseline_study(), ["train.lr", "train.seed"], {"penalty.kind": "none", "train.lr": "0.04"})
    assert sorted(a.label for a in arms) == ["no penalty, lr 0.004", "no penalty, lr 0.04"]
    assert all(a.coef is None and a.tried.empty and len(a.runs) == 3 for a in arms)


def test_arm_rows_carry_a_t_interval_over_the_seeds() -> None:
    (arm,) = study_arms(penalty_study({0.01: (0.8, 0.7)}), ["penalty.coef", "train.seed"], PARAMS)
    (row,) = arms_table([arm])
    test = np.array([0.70, 0.71, 0.72])
    expected = stats.t.interval(0.95, 2, loc=test.mean(), scale=stats.sem(test))
    assert row["test_ci95"] == pytest.approx(list(expected))
    assert (
        row["test_mean"] == pytest.approx(0.71)
        and row["val_std"] == pytest.approx(0.0, abs=1e-12)
        and row["coefs_tried"] == 1
    )


def test_comparisons_are_welch_with_holm_over_the_table() -> None:
    plain = study_arms(baseline_study(), ["train.lr", "train.seed"], {"penalty.kind": "none", "train.lr": "0.04"})
    (fp,) = study_arms(penalty_study({0.01: (0.8, 0.8)}), ["penalty.coef", "train.seed"], PARAMS)
    rows = comparisons([*plain, fp])
    assert [(r["a"], r["b"]) for r in rows] == [
        ("FP, lr 0.004", "no penalty, lr 0.04"),
        ("FP, lr 0.004", "no penalty, lr 0.004"),
        ("no penalty, lr 0.04", "no penalty, lr 0.004"),
    ]
    fp_test, high, low = np.array([0.80, 0.81, 0.82]), np.array([0.90, 0.92, 0.94]), np.array([0.70, 0.72, 0.74])
    expected = stats.ttest_ind(fp_test, high, equal_var=False)
    assert rows[0]["difference_points"] == pytest.approx(100 * (fp_test.mean() - high.mean()))
    assert rows[0]["p"] == pytest.approx(expected.pvalue)
    assert rows[0]["ci95_points"] == pytest.approx([100 * v for v in expected.confidence_interval(0.95)])
    assert [r["p_holm"] for r in rows] == pytest.approx(holm([r["p"] for r in rows]))
    assert rows[2]["difference_points"] == pytest.approx(100 * (high.mean() - low.mean()))
    assert rows[2]["peak_ratio"] == pytest.approx(0.5)


def test_an_arm_without_spread_gets_a_note_not_a_number() -> None:
    flat = trials([(0.01, s, 0.8, 0.75, 50.0) for s in (0, 1, 2)]).rename(columns={"key": "penalty.coef"})
    (fp,) = study_arms(flat, ["penalty.coef", "train.seed"], PARAMS)
    plain = study_arms(baseline_study(), ["train.lr", "train.seed"], {"penalty.kind": "none", "train.lr": "0.04"})
    rows = comparisons([fp, *plain])
    assert rows[0]["p"] is None and rows[0]["ci95_points"] is None and "no spread" in rows[0]["note"]
    assert rows[0]["difference_points"] == pytest.approx(100 * (0.75 - 0.92))
    assert rows[2]["p_holm"] == pytest.approx(holm([rows[2]["p"]])[0])  # Holm over the tested ones only
    assert arms_table([fp])[0]["test_ci95"] is None


def test_a_coefficient_that_lost_seeds_is_not_chosen_over_one_that_lost_none() -> None:
    """α = 0.1's one survivor has the best validation accuracy, but its other seeds diverged."""
    table = penalty_study({0.01: (0.91, 0.90), 0.1: (0.95, 0.93)})
    lost = (table["penalty.coef"] == 0.1) & (table["train.seed"] < 2)
    table.loc[lost, "outcome"] = names.DIVERGED
    (arm,) = study_arms(table, ["penalty.coef", "train.seed"], PARAMS)
    assert arm.coef == 0.01 and len(arm.runs) == 3
    tried = arm.tried.set_index("penalty.coef")
    assert tried.loc[0.1, "n"] == 1 and tried.loc[0.1, "lost"] == 2 and tried.loc[0.01, "lost"] == 0
    table.loc[(table["penalty.coef"] == 0.01) & (table["train.seed"] == 0), "outcome"] = names.FAILED
    (arm,) = study_arms(table, ["penalty.coef", "train.seed"], PARAMS)
    assert arm.coef == 0.1  # every coefficient lost a seed: validation decides again


def test_the_peak_ratio_has_a_welch_interval_on_log_peaks() -> None:
    penalised = study_arms(penalty_study({0.01: (0.85, 0.90)}), ["penalty.coef", "train.seed"], PARAMS)
    plain = study_arms(baseline_study(), ["train.lr", "train.seed"], {"penalty.kind": "none"})
    row = next(r for r in comparisons([*penalised, *plain]) if r["b"] == "no penalty, lr 0.004")
    peaks_a, peaks_b = np.log([50.0, 51.0, 52.0]), np.log([200.0] * 3)
    assert row["peak_ratio_ci95"] is None  # the baseline arm's peaks have no spread
    next(a for a in plain if a.lr == 0.004).runs.loc[:, names.FISHER_PEAK] = [190.0, 200.0, 215.0]
    row = next(r for r in comparisons([*penalised, *plain]) if r["b"] == "no penalty, lr 0.004")
    peaks_b = np.log([190.0, 200.0, 215.0])
    low, high = stats.ttest_ind(peaks_a, peaks_b, equal_var=False).confidence_interval(0.95)
    assert row["peak_ratio_ci95"] == pytest.approx([np.exp(low), np.exp(high)])
    assert row["peak_ratio_ci95"][0] < row["peak_ratio"] < row["peak_ratio_ci95"][1]
    assert row["peak_ratio"] == pytest.approx(np.exp(peaks_a.mean() - peaks_b.mean()))  # the interval's estimand


def test_a_tie_on_validation_survives_the_order_of_float_sums() -> None:
    """The same three accuracies summed in another seed order differ in the last bit."""
    table = penalty_study({0.01: (0.8, 0.8), 0.1: (0.8, 0.9)})
    table.loc[table["penalty.coef"] == 0.01, names.FINAL_VAL_ACCURACY] = [0.1, 0.2, 0.3]
    table.loc[table["penalty.coef"] == 0.1, names.FINAL_VAL_ACCURACY] = [0.3, 0.2, 0.1]
    means = table.groupby("penalty.coef")[names.FINAL_VAL_ACCURACY].mean()
    assert means[0.01] != means[0.1]  # 0.2 and 0.20000000000000004
    (arm,) = study_arms(table, ["penalty.coef", "train.seed"], PARAMS)
    assert arm.coef == 0.01


def test_arms_take_their_kind_and_other_searched_values_from_their_configuration() -> None:
    """Every configuration was labelled 'kind, lr' with the study's kind: a baseline that searched
    weight decay gave two 'no penalty, lr 0.04' arms, and a searched penalty.kind made its 'none'
    configuration a penalised 'FP' arm."""
    wd = trials([(wd, s, 0.9, 0.9, 100.0) for wd in (0.0, 1e-4) for s in (0, 1)]).rename(
        columns={"key": "train.weight_decay"}
    )
    arms = study_arms(wd, ["train.weight_decay", "train.seed"], {"penalty.kind": "none", LR: "0.04"})
    assert [a.label for a in arms] == [
        "no penalty, lr 0.04, train.weight_decay 0.0",
        "no penalty, lr 0.04, train.weight_decay 0.0001",
    ]
    kinds = trials([(k, s, 0.9, 0.9, 100.0) for k in ("none", "fisher") for s in (0, 1)]).rename(
        columns={"key": "penalty.kind"}
    )
    arms = study_arms(kinds, ["penalty.kind", "train.seed"], {"penalty.kind": "fisher", LR: "0.04"})
    assert {a.label: a.penalised for a in arms} == {"no penalty, lr 0.04": False, "FP, lr 0.04": True}
