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
from scipy import stats

from analysis.report import analyze
from study.cli import main

EPS = 0.5


def fisher_points(i: int) -> list[tuple[int, float]]:
    """Peak after epoch 1 (step ≥ 20) is 80 − 10i at step 30."""
    return [(0, 1.0), (10, 5.0 + i), (20, 50.0 - 5 * i), (30, 80.0 - 10 * i), (40, 60.0 - 8 * i), (50, 40.0 - 5 * i)]


def loss_points(crossing: int | None) -> list[tuple[int, float]]:
    return [(s, 0.4 if crossing is not None and s >= crossing else 1.0) for s in range(10, 60, 10)]


def brute_force_peak(i: int) -> tuple[float, float]:
    """The 1-epoch box average of the linear interpolant by dense sampling, max over centres ≥ 1."""
    steps, values = zip(*fisher_points(i), strict=True)
    fine = np.linspace(0, 2.5, 250_001)
    curve = np.interp(fine, np.array(steps) / 20, values)
    centres = np.arange(8, 17) / 8  # 1.0 … 2.0: whole boxes inside epochs 0–2.5
    averages = [curve[(fine >= c - 0.5) & (fine <= c + 0.5)].mean() for c in centres]
    k = int(np.argmax(averages))
    return averages[k], centres[k]


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
        metrics += [Metric("fisher_trace_stderr", 0.1 * v, 0, s) for s, v in fisher_points(i)]
        metrics += [Metric("epoch", s / 20, 0, s) for s, _ in fisher_points(i)]
        metrics += [Metric("train_loss", v, 0, s) for s, v in loss_points(crossing)]
        metrics += [Metric("train_examples", 32.0, 0, s) for s, _ in loss_points(crossing)]
        metrics += [Metric("val_accuracy", acc - 0.02 + 0.001 * s, 0, s) for s in (20, 40)]
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
    assert report["read_spacing"]["fisher_peak"] == {"median": 10, "max": 10}
    assert "The peak reads interpolate points up to 10 steps apart" in (out / "report.md").read_text()

    table = pd.read_csv(out / "trials.csv")
    row = table.set_index("trial_id")
    # raw early = Tr(F) at the crossing step: i%3 == 0 → step 20 (50 − 5i), 1 → step 30 (80 − 10i), 2 → step 40 (60 − 8i)
    expected_early = {"t0": 50.0, "t1": 70.0, "t2": 44.0, "t3": 35.0, "t4": 40.0, "t5": 20.0}
    for trial, value in expected_early.items():
        assert row.loc[trial, "raw_early_fisher_trace"] == value
    assert math.isnan(row.loc["t6", "early_fisher_trace"]) and math.isnan(row.loc["t6", "raw_early_fisher_trace"])
    for i in range(7):
        assert row.loc[f"t{i}", "raw_fisher_peak"] == 80.0 - 10 * i
        assert row.loc[f"t{i}", "raw_fisher_peak_step"] == (30 if i < 6 else 20)  # t6 ties at 20 and 30: first
        peak, epoch = brute_force_peak(i)
        assert row.loc[f"t{i}", "fisher_peak"] == pytest.approx(peak, rel=1e-5)
        assert row.loc[f"t{i}", "fisher_peak_epoch"] == epoch
        assert row.loc[f"t{i}", "fisher_peak_spacing"] == 10  # the points are logged every 10 steps
        assert 0 < row.loc[f"t{i}", "fisher_peak_stderr"] < 0.1 * (80.0 - 10 * i)  # averaging shrinks it
    assert row.loc["t2", "mismatch"] == "fisher_peak" and row.loc["t2", "logged_fisher_peak"] == 999.0
    assert row.loc["t0", "train.lr"] == pytest.approx(1e-3)
    assert {"seed", "final_test_accuracy", "best_test_accuracy", "final_val_accuracy", "outcome"} <= set(table.columns)
    # the validation accuracy at the first epoch end (steps 20, 40) at or after the end of the
    # read's 1-epoch box: early at 0.875 (box end 1.375) → epoch 2; the peak's box ends after the last one
    assert row.loc["t0", "early_fisher_trace_epoch"] == 0.875
    assert row.loc["t0", "val_accuracy_at_early"] == pytest.approx(0.90 - 0.02 + 0.04)
    assert row.loc["t0", "val_epoch_at_early"] == 2.0
    assert row.loc["t0", "fisher_peak_epoch"] > 1.5 and math.isnan(row.loc["t0", "val_accuracy_at_peak"])

    used = row.loc[[f"t{i}" for i in range(7)]]
    early = report["correlations"]["early_fisher_trace"]
    assert early["n"] == early["n_configurations"] == 6  # every trial its own configuration
    crossed = used.dropna(subset=["early_fisher_trace"])
    assert early["spearman"]["r"] == pytest.approx(
        stats.spearmanr(crossed["early_fisher_trace"], crossed["final_test_accuracy"]).statistic
    )
    peak = report["correlations"]["fisher_peak"]
    assert peak["n"] == 7
    assert peak["spearman"]["r"] == pytest.approx(-1.0) and peak["kendall"]["r"] == pytest.approx(-1.0)
    assert peak["spearman"]["p"] == pytest.approx(2 / math.factorial(7))  # exact: 2 of 7! pairings as extreme
    assert peak["pearson"]["r"] == pytest.approx(
        np.corrcoef(np.log(used["fisher_peak"]), used["final_test_accuracy"])[0, 1]
    )
    for method in ("spearman", "kendall", "pearson"):
        lo, hi = peak[method]["ci95"]
        assert -1 <= lo <= peak[method]["r"] <= hi <= 1
    assert report["correlations_best"]["fisher_peak"]["spearman"]["r"] == pytest.approx(-1.0)
    assert "partial_on_log_lr" not in report and "within_seed" not in report
    for key in ("within_configuration", "beyond_early_val"):
        assert "2 or more replicas" in report[key]["fisher_peak"]["message"]
    assert report["primary"]["measure"] == "early_fisher_trace"
    assert report["primary"]["estimate"] == early["spearman"]["r"]
    assert report["primary"]["n_configurations"] == 6
    assert "correlations.early_fisher_trace.spearman" not in {t["name"] for t in report["family"]}
    assert all(t["p"] <= t["p_holm"] <= 1 for t in report["family"])

    for name in ("report.md", "report.json", "fisher_curves.png", "fisher_vs_accuracy.png", "accuracy_heatmap.png"):
        assert (out / name).is_file()
        assert (out / name).stat().st_size < 300_000
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    text = (out / "report.md").read_text()
    assert "Primary test" in text.split("\n")[2] and "Exploratory" in text

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
        exp,
        tags={
            "fishtune.role": "trial",
            "fishtune.trial_id": "a",
            "fishtune.outcome": "completed",
            "mlflow.parentRunId": parent.info.run_id,
        },
    )
    client.log_param(run.info.run_id, "train.lr", "0.1")
    report = analyze(uri, "tiny", tmp_path / "out")
    assert report["correlations"] == {} and "at least 3" in report["message"]
    # design §6's keys are there, empty, rather than missing
    assert report["correlations_best"] == report["within_configuration"] == report["beyond_early_val"] == {}
    assert report["family"] == [] and report["primary"]["estimate"] is None


def test_cli_analyze_prints_the_headline_and_refuses_unknown_studies(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", "synthetic", "--tracking-uri", store, "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "fisher_peak" in out and "Spearman" in out
    assert main(["analyze", "nope", "--tracking-uri", store]) == 2
    assert "no such MLflow experiment" in capsys.readouterr().err
    assert main(["analyze", "synthetic", "--tracking-uri", store, "--epsilon", "-1"]) == 2
    assert main(["analyze", "synthetic", "--tracking-uri", store, "--smooth-epochs", "0"]) == 2
    assert "--smooth-epochs: must be > 0" in capsys.readouterr().err


def test_smooth_epochs_sets_the_box(store: str, tmp_path: Path) -> None:
    assert (
        main(["analyze", "synthetic", "--tracking-uri", store, "--out", str(tmp_path / "r"), "--smooth-epochs", "0.5"])
        == 0
    )
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["smoothing"] == {"window_epochs": 0.5, "grid_epochs": 0.125}
    wide = analyze(store, "synthetic", tmp_path / "w")
    table = pd.read_csv(tmp_path / "r" / "trials.csv").set_index("trial_id")
    assert (
        table["fisher_peak"] >= pd.read_csv(tmp_path / "w" / "trials.csv").set_index("trial_id")["fisher_peak"]
    ).all()
    assert wide["smoothing"]["window_epochs"] == 1.0


def replicated_store(uri: str) -> None:
    """3 learning rates × 3 seeds: Tr(F) and accuracy both move with the seed inside a configuration."""
    client = MlflowClient(uri)
    exp = client.create_experiment("replicated")
    parent = client.create_run(exp, tags={"fishtune.role": "study", "fishtune.searched": "train.lr,train.seed"})
    client.log_param(parent.info.run_id, "fisher.epsilon", str(EPS))
    for i, (lr, seed) in enumerate((lr, seed) for lr in (0.01, 0.02, 0.04) for seed in (0, 1, 2)):
        run = client.create_run(
            exp,
            tags={
                "fishtune.role": "trial",
                "fishtune.trial_id": f"r{i}",
                "fishtune.outcome": "completed",
                "mlflow.parentRunId": parent.info.run_id,
            },
        )
        scale = (1 + 0.1 * seed) / lr  # a larger Tr(F) for a seed goes with a lower accuracy
        acc = 0.9 + lr - 0.002 * seed**2
        points = [(s, scale * (1 + s / 20)) for s in range(0, 60, 10)]
        metrics = [Metric("fisher_trace", v, 0, s) for s, v in points]
        metrics += [Metric("epoch", s / 20, 0, s) for s, _ in points]
        metrics += [Metric("train_loss", 1.0 if s < 30 else 0.2, 0, s) for s, _ in points[1:]]
        metrics += [Metric("val_accuracy", acc - 0.05 + 0.003 * ((seed * 7 + i) % 3), 0, s) for s in (20, 40)]
        metrics += [Metric("final_test_accuracy", acc, 0, 50), Metric("best_test_accuracy", acc, 0, 50)]
        client.log_batch(
            run.info.run_id, metrics=metrics, params=[Param("train.lr", str(lr)), Param("train.seed", str(seed))]
        )


def test_replicas_give_within_configuration_and_beyond_validation_blocks(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'r.db'}"
    replicated_store(uri)
    report = analyze(uri, "replicated", tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert table.groupby("train.lr")["configuration"].nunique().eq(1).all() and table["configuration"].nunique() == 3
    block = report["correlations"]["fisher_peak"]
    assert block["n"] == 9 and block["n_configurations"] == 3
    assert "ci95" in block["spearman"] and block["spearman"]["ci95"] == [None, None]  # 3 points: no interval
    assert "fewer than 4 configurations" in report["primary"]["message"]  # and the report says why
    assert "no 95 % interval" in (tmp_path / "out" / "report.md").read_text()
    within = report["within_configuration"]["fisher_peak"]
    assert within["n_trials"] == 9 and within["n_configurations"] == 3
    assert within["r"] < -0.9 and within["p"] < 0.05
    beyond = report["beyond_early_val"]["early_fisher_trace"]
    assert set(beyond) >= {"estimate", "p", "ci95", "epoch"} and beyond["epoch"] == 2.0
    assert beyond["estimate"] < -0.5
    names = {t["name"] for t in report["family"]}
    assert {"within_configuration.fisher_peak", "beyond_early_val.early_fisher_trace"} <= names
