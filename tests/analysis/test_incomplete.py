"""Configurations that lost seeds: counted, named, and the primary test repeated without them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.configurations import configuration_ids
from analysis.markdown import markdown
from analysis.mlflow_reader import StudyData
from analysis.report import build_report

LRS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08)
ACCURACY = {0.002: 0.95, 0.005: 0.97, 0.01: 0.98, 0.02: 0.985, 0.04: 0.975, 0.08: 0.96}
TRACE = {0.002: 600, 0.005: 400, 0.01: 280, 0.02: 180, 0.04: 100, 0.08: 60}


def study(collapsed: tuple[float, ...]) -> tuple[StudyData, pd.DataFrame]:
    """6 learning rates × 3 seeds; at each lr in ``collapsed`` two seeds diverge, and at lr 0.002
    one completed seed never crosses ε; plus one run still running."""
    rng = np.random.default_rng(0)
    rows = []
    for lr in LRS:
        for seed in range(3):
            diverged = lr in collapsed and seed < 2
            accuracy = 0.10 if diverged else ACCURACY[lr] + 0.003 * rng.normal()
            early = np.nan if (lr == 0.002 and seed == 2) else TRACE[lr] * np.exp(0.05 * rng.normal())
            rows.append(
                {
                    "trial_id": f"t{lr}_{seed}",
                    "outcome": "diverged" if diverged else "completed",
                    "train.lr": lr,
                    "seed": seed,
                    "early_fisher_trace": early,
                    "fisher_peak": 1.2 * TRACE[lr],
                    "final_test_accuracy": accuracy,
                    "best_test_accuracy": accuracy,
                    "final_val_accuracy": accuracy,
                    "val_accuracy_at_early": accuracy,
                    "val_epoch_at_early": 2.0,
                    "val_accuracy_at_peak": accuracy,
                    "val_epoch_at_peak": 2.0,
                }
            )
    rows.append({**rows[0], "trial_id": "t_running", "outcome": "running", "final_test_accuracy": np.nan})
    table = pd.DataFrame(rows)
    table.insert(2, "configuration", configuration_ids(table, ["train.lr"]))
    return StudyData("demo", "p", {}, ["train.lr", "train.seed"], table, {}), table


def test_every_trial_is_used_or_counted_as_excluded() -> None:
    data, table = study(collapsed=(0.04, 0.08))
    report = build_report(data, table, 0.6)
    assert report["excluded"] == {"diverged": 4, "failed": 0, "early_stopped": 0, "running": 1}
    assert report["n_used"] + sum(report["excluded"].values()) == report["n_trials"] == 19


def test_configurations_that_lost_seeds_are_counted_named_and_left_out_of_a_sensitivity_test() -> None:
    data, table = study(collapsed=(0.04, 0.08))
    report = build_report(data, table, 0.6)
    early = report["correlations"]["early_fisher_trace"]
    assert (
        early["n_configurations"] == 6 and early["n_configurations_incomplete"] == 3
    )  # 0.002 (not crossed), 0.04, 0.08
    # the peak needs no crossing: 0.002 lost only its running trial there
    assert report["correlations"]["fisher_peak"]["n_configurations_incomplete"] == 3
    lost = {row["values"]["train.lr"]: row for row in report["incomplete_configurations"]}
    assert lost[0.04] == {"values": {"train.lr": 0.04}, "trials": 3, "completed": 1, "lost": {"diverged": 2}}
    assert lost[0.002]["lost"] == {"not_crossed": 1, "running": 1} and lost[0.002]["trials"] == 4
    complete = report["primary"]["complete_only"]
    assert complete["n_configurations"] == 3 and complete["estimate"] == pytest.approx(-1.0)  # 0.005, 0.01, 0.02
    text = markdown(report, [])
    assert "3 of the 6 configurations rest on fewer seeds than they ran" in text
    assert "trials lost: 4 diverged, 1 not crossed, 1 running" in text and "complete configurations only" in text


def test_without_lost_seeds_there_is_no_sensitivity_test() -> None:
    data, table = study(collapsed=())
    table = table[(table["outcome"] != "running")].copy()
    table.loc[table["early_fisher_trace"].isna(), "early_fisher_trace"] = 650.0
    report = build_report(data, table, 0.6)
    assert report["correlations"]["early_fisher_trace"]["n_configurations_incomplete"] == 0
    assert "complete_only" not in report["primary"] and report["incomplete_configurations"] == []
    assert "fewer seeds than they ran" not in markdown(report, [])
