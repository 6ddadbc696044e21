"""The analysis on a synthetic MLflow store with known curves, peaks, crossings and outcomes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from analysis.report import analyze
from study.cli import main

EPS = 0.5


def fisher_points(i: int) -> list[tuple[int, float]]:
    """Peak after epoch 1 (step ≥ 20) is 80 − 10i at step 30."""
    return [(0, 1.0), (10, 5.0 + i), (20, 50.0 - 5 * i), (30, 80.0 - 10 * i), (40, 60.0 - 8 * i), (50, 40.0 - 5 * i)]


def loss_points(crossing: int | None) -> list[tuple[int, float]]:
    return [(s, 0.4 if crossing is not None and s >= crossing else 1.0) for s in range(10, 60, 10)]


def build_store(uri: str, name: str = "synthetic") -> dict[str, str]:
    client = MlflowClient(uri)
    exp = client.create_experiment(name)
    parent = client.create_run(exp, tags={"fishtune.role": "study", "fishtune.searched": "train.lr,penalty.coef"})
    client.log_batch(parent.info.run_id, params=[Param("fisher.epsilon", str(EPS))])
    ids = {}

    def child(
        trial: str, outcome: str, i: int, crossing: int | None, acc: float, logged_peak: float | None = None
    ) -> None:
        run = client.create_run(
            exp,
            tags={
                "fishtune.role": "trial",
                "fishtune.trial_id": trial,
                "fishtune.outcome": outcome,
                "mlflow.parentRunId": parent.info.run_id,
            },
        )
        rid = run.info.run_id
        lr, coef = 10 ** (-3 + 0.4 * i), 10 ** (-2 + 0.1 * (i % 3))
        seed = i % 2
        client.log_batch(
            rid, params=[Param("train.lr", str(lr)), Param("penalty.coef", str(coef)), Param("train.seed", str(seed))]
        )
        metrics = [Metric("fisher_trace", v, 0, s) for s, v in fisher_points(i)]
        metrics += [Metric("epoch", s / 20, 0, s) for s, _ in fisher_points(i)]
        metrics += [Metric("train_loss", v, 0, s) for s, v in loss_points(crossing)]
        metrics += [Metric("final_test_accuracy", acc, 0, 50), Metric("best_test_accuracy", acc + 0.005, 0, 50)]
        metrics += [Metric("final_val_accuracy", acc - 0.01, 0, 50)]
        metrics.append(Metric("fisher_peak", logged_peak if logged_peak is not None else 80.0 - 10 * i, 0, 50))
        client.log_batch(rid, metrics=metrics, tags=[RunTag("x", "y")])
        ids[trial] = rid

    for i in range(6):  # completed, crossing at steps 20, 30, 40, 20, 30, 40
        child(f"t{i}", "completed", i, 20 + 10 * (i % 3), 0.90 + 0.01 * i, logged_peak=999.0 if i == 2 else None)
    child("t6", "completed", 6, None, 0.96)  # never reaches ε
    child("t7", "diverged", 7, 20, 0.10)
    child("t8", "early_stopped", 1, 20, 0.5)
    child("t9", "failed", 2, None, 0.0)
    return ids


@pytest.fixture
def store(tmp_path: Path) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    build_store(uri)
    return uri


def test_report_values_against_hand_computed_numbers(store: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = analyze(store, "synthetic", out)
    assert report["n_trials"] == 10 and report["n_used"] == 7
    assert report["excluded"] == {"diverged": 1, "failed": 1, "early_stopped": 1}
    assert report["not_crossed"] == ["t6"]
    assert report["epsilon"] == EPS

    table = pd.read_csv(out / "trials.csv")
    row = table.set_index("trial_id")
    # early = Tr(F) at the crossing step: i%3 == 0 → step 20 (50 − 5i), 1 → step 30 (80 − 10i), 2 → step 40 (60 − 8i)
    expected_early = {"t0": 50.0, "t1": 70.0, "t2": 44.0, "t3": 35.0, "t4": 40.0, "t5": 20.0}
    for trial, value in expected_early.items():
        assert row.loc[trial, "early_fisher_trace"] == value
    assert math.isnan(row.loc["t6", "early_fisher_trace"])
    for i in range(7):
        assert row.loc[f"t{i}", "fisher_peak"] == 80.0 - 10 * i
        assert row.loc[f"t{i}", "fisher_peak_step"] == (30 if i < 6 else 20)  # t6 ties at 20 and 30: first
    assert row.loc["t2", "mismatch"] == "fisher_peak" and row.loc["t2", "logged_fisher_peak"] == 999.0
    assert row.loc["t0", "train.lr"] == pytest.approx(1e-3)
    assert {"seed", "final_test_accuracy", "best_test_accuracy", "final_val_accuracy", "outcome"} <= set(table.columns)

    early = report["correlations"]["early_fisher_trace"]
    assert early["n"] == 6
    # ranks of early values [5, 6, 4, 2, 3, 1] against accuracy ranks 1..6: Σd² = 66
    assert early["spearman"]["r"] == pytest.approx(1 - 6 * 66 / (6 * 35))
    peak = report["correlations"]["fisher_peak"]
    assert peak["n"] == 7
    assert peak["spearman"]["r"] == pytest.approx(-1.0) and peak["kendall"]["r"] == pytest.approx(-1.0)
    peaks, accs = np.array([80.0 - 10 * i for i in range(7)]), np.array([0.90 + 0.01 * i for i in range(6)] + [0.96])
    assert peak["pearson"]["r"] == pytest.approx(np.corrcoef(np.log(peaks), accs)[0, 1])
    lo, hi = peak["spearman"]["ci95"]
    assert lo <= peak["spearman"]["r"] <= hi
    assert report["correlations_best"]["fisher_peak"]["spearman"]["r"] == pytest.approx(-1.0)
    assert "partial_on_log_lr" in report and "within_seed" in report

    for name in ("report.md", "report.json", "fisher_curves.png", "fisher_vs_accuracy.png", "accuracy_heatmap.png"):
        assert (out / name).is_file()
        assert (out / name).stat().st_size < 300_000
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert "Spearman" in (out / "report.md").read_text()

    client = MlflowClient(store)
    parent = client.search_runs(
        [client.get_experiment_by_name("synthetic").experiment_id], "tags.`fishtune.role` = 'study'"
    )[0]
    assert {"report/report.json", "report/trials.csv"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id, "report")
    }


def test_bootstrap_is_seeded(store: str, tmp_path: Path) -> None:
    a = analyze(store, "synthetic", tmp_path / "a")
    b = analyze(store, "synthetic", tmp_path / "b")
    assert a["correlations"] == b["correlations"]


def test_epsilon_option_changes_the_crossing(store: str, tmp_path: Path) -> None:
    report = analyze(store, "synthetic", tmp_path / "o", epsilon=0.3)  # no loss below 0.3
    assert report["correlations"]["early_fisher_trace"]["n"] == 0
    assert len(report["not_crossed"]) == 7


def test_fewer_than_three_usable_trials_gives_a_message_and_no_numbers(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tiny")
    parent = client.create_run(exp, tags={"fishtune.role": "study", "fishtune.searched": "train.lr"})
    client.log_param(parent.info.run_id, "fisher.epsilon", "0.5")
    run = client.create_run(
        exp, tags={"fishtune.role": "trial", "fishtune.trial_id": "a", "fishtune.outcome": "completed"}
    )
    client.log_param(run.info.run_id, "train.lr", "0.1")
    report = analyze(uri, "tiny", tmp_path / "out")
    assert report["correlations"] == {} and "at least 3" in report["message"]


def test_cli_analyze_prints_the_headline_and_refuses_unknown_studies(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", "synthetic", "--tracking-uri", store, "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "fisher_peak" in out and "Spearman" in out
    assert main(["analyze", "nope", "--tracking-uri", store]) == 2
    assert "no such MLflow experiment" in capsys.readouterr().err
    assert main(["analyze", "synthetic", "--tracking-uri", store, "--epsilon", "-1"]) == 2


def test_measures_edge_cases() -> None:
    from analysis.measures import early_fisher_trace, fisher_at_epoch, fisher_peak

    steps = [0, 10, 20, 30, 40]
    fisher = pd.Series([1.0, math.nan, 7.0, 7.0, 3.0], index=steps)
    loss = pd.Series([2.0, 0.4, 0.3, 0.2], index=steps[1:])
    epoch = pd.Series([s / 20 for s in steps], index=steps)
    assert early_fisher_trace(loss, fisher, 0.5) == (7.0, 20)  # NaN at the crossing step is skipped
    assert early_fisher_trace(loss, fisher, 0.1) is None  # no crossing
    assert fisher_peak(fisher, epoch) == (7.0, 20)  # a tie: the first step
    assert fisher_peak(fisher, epoch / 100) is None  # epoch 1 never reached
    assert fisher_at_epoch(fisher, epoch, 1.5) == 7.0 and math.isnan(fisher_at_epoch(fisher, epoch, 9))


def test_constant_fisher_gives_no_correlation_numbers() -> None:
    from analysis.stats import correlations

    block = correlations(np.full(5, 3.0), np.linspace(0.5, 0.9, 5))
    assert block == {"n": 5}


def test_statistics_agree_with_scipy() -> None:
    from scipy import stats

    from analysis.stats import METHODS, correlations

    rng = np.random.default_rng(3)
    x, y = rng.lognormal(size=12), rng.normal(size=12)
    block = correlations(x, y)
    assert block["spearman"]["r"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert block["kendall"]["p"] == pytest.approx(stats.kendalltau(x, y).pvalue)
    assert block["pearson"]["r"] == pytest.approx(stats.pearsonr(np.log(x), y).statistic)
    idx = np.stack([np.arange(12), rng.integers(0, 12, 12), rng.integers(0, 12, 12)])  # resamples, ties too
    for name, method in METHODS.items():
        expected = [method.test(np.log(x[i]) if method.log_x else x[i], y[i]).statistic for i in idx]
        np.testing.assert_allclose(method.rows(x, y, idx), expected, rtol=1e-10, err_msg=name)


def test_partial_correlation_removes_the_covariate() -> None:
    from analysis.stats import partial_correlation

    rng = np.random.default_rng(0)
    lr = np.log(np.repeat([1e-3, 1e-2, 1e-1], 6))
    noise = rng.normal(size=18)
    measure = np.exp(-lr + 0.01 * rng.normal(size=18))  # Tr(F) decided by lr alone
    accuracy = 0.9 + 0.01 * lr + 0.001 * noise
    block = partial_correlation(measure, accuracy, lr, rank=False)
    assert abs(block["r"]) < 0.6 and block["p"] > 0.01  # nothing left once lr is removed
    informative = np.exp(-lr + noise)  # Tr(F) also carries the accuracy's own noise
    block = partial_correlation(informative, accuracy, lr, rank=True)
    assert block["r"] > 0.8 and block["ci95"][0] <= block["r"] <= block["ci95"][1]
