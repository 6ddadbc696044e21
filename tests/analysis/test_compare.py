"""``fishtune compare`` end to end on two synthetic studies in one SQLite MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis import names
from analysis.compare import TooFewArms, compare
from study.cli import main

STEPS = (0, 10, 20, 30, 40)


def study(client: MlflowClient, name: str, params: dict[str, str], searched: str, trials: list[dict]) -> None:
    """A parent run with the flattened spec, one child run per trial: its searched params, curves
    that cross ε and the summary accuracies."""
    exp = client.create_experiment(name)
    parent = client.create_run(exp, tags={"fishtune.role": "study", "fishtune.searched": searched})
    client.log_batch(parent.info.run_id, params=[Param(k, v) for k, v in {"fisher.epsilon": "0.5", **params}.items()])
    for i, trial in enumerate(trials):
        run = client.create_run(
            exp,
            tags={
                "fishtune.role": "trial",
                "fishtune.trial_id": f"{name}-{i}",
                "fishtune.outcome": "completed",
                "mlflow.parentRunId": parent.info.run_id,
            },
        )
        peak = trial.pop("peak")
        metrics = [Metric(names.FISHER_TRACE, peak if s == 20 else 10.0, 0, s) for s in STEPS]
        metrics += [Metric(names.EPOCH, s / 10, 0, s) for s in STEPS]
        metrics += [Metric(names.TRAIN_LOSS, 1.0 if s < 20 else 0.3, 0, s) for s in STEPS[1:]]
        accuracies = {names.FINAL_VAL_ACCURACY: "val", names.FINAL_TEST_ACCURACY: "test"}
        metrics += [Metric(metric, trial.pop(key), 0, 40) for metric, key in accuracies.items()]
        metrics += [Metric(names.BEST_TEST_ACCURACY, metrics[-1].value, 0, 40)]
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in trial.items()])


@pytest.fixture
def store(tmp_path: Path) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    measured = {"fisher.labels": "exact", "fisher.samples": "64", "fisher.schedule.budget": "0.15"}
    base = {"penalty.kind": "none", "penalty.coef": "0.0", "train.lr": "0.04", **measured}
    study(
        client,
        "base",
        base,
        "train.lr,train.seed",
        [
            {"train.lr": lr, "train.seed": s, "val": 0.9, "test": acc + 0.01 * s, "peak": 100.0}
            for lr, acc in ((0.04, 0.9), (0.004, 0.8))
            for s in (0, 1, 2)
        ],
    )
    study(
        client,
        "fp",
        {**base, "penalty.kind": "fisher", "train.lr": "0.004"},
        "penalty.coef,train.seed",
        [
            {"penalty.coef": coef, "train.seed": s, "val": val, "test": 0.88 + 0.01 * s, "peak": 50.0}
            for coef, val in ((0.001, 0.7), (0.01, 0.8))
            for s in (0, 1, 2)
        ],
    )
    return uri


def test_compare_writes_the_table_and_prints_one_line_per_arm(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "t1"
    assert main(["compare", "base", "fp", "--name", "t1", "--tracking-uri", store, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "FP, lr 0.004 (α 0.01 of 2): final test accuracy 0.8900, n = 3" in printed
    assert f"comparison: {out / 'compare.md'}" in printed
    result = json.loads((out / "compare.json").read_text())
    assert [row["arm"] for row in result["arms"]] == ["no penalty, lr 0.004", "no penalty, lr 0.04", "FP, lr 0.004"]
    fp_vs_small = next(r for r in result["comparisons"] if r["b"] == "no penalty, lr 0.004" and r["a"].startswith("FP"))
    assert fp_vs_small["difference_points"] == pytest.approx(8.0)
    assert fp_vs_small["peak_ratio"] == pytest.approx(0.5, rel=0.2)  # smoothed peaks of the same spike shape
    assert len(pd.read_csv(out / "coefficients.csv")) == 2 and len(pd.read_csv(out / "arms.csv")) == 3
    text = (out / "compare.md").read_text()
    assert "| FP, lr 0.004 | 0.01 | 2 | 3 |" in text and "Holm over the 3 comparisons" in text
    assert "no spread" not in text  # every arm's seeds differ in test accuracy: each comparison has its interval
    assert result["measurement_differences"] == {} and "Warning" not in text  # both measure Tr(F) alike
    assert "warning" not in capsys.readouterr().err


def test_compare_warns_when_the_studies_measure_tr_f_differently(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = MlflowClient(store)
    params = {"penalty.kind": "fisher", "train.lr": "0.004", "fisher.labels": "top", "fisher.samples": "64"}
    params["fisher.schedule.budget"] = "0.2"
    trials = [{"penalty.coef": 0.01, "train.seed": s, "val": 0.8, "test": 0.9, "peak": 50.0} for s in (0, 1, 2)]
    study(client, "fp-top", params, "penalty.coef,train.seed", trials)
    out = tmp_path / "mixed"
    assert main(["compare", "base", "fp-top", "--name", "m", "--tracking-uri", store, "--out", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fishtune: warning: the studies measure Tr(F) differently")
    assert "fisher.labels exact in base, top in fp-top" in err[0] and "fisher.schedule.budget 0.15 in base" in err[0]
    result = json.loads((out / "compare.json").read_text())
    assert result["measurement_differences"] == {
        "fisher.labels": {"base": "exact", "fp-top": "top"},
        "fisher.schedule.budget": {"base": "0.15", "fp-top": "0.2"},
    }
    assert "**Warning:** the studies measure Tr(F) differently" in (out / "compare.md").read_text()


def test_compare_refuses_an_unknown_study_and_a_single_arm(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", "base", "nope", "--name", "x", "--tracking-uri", store, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "study 'nope'" in err[0]
    assert main(["compare", "fp", "--name", "x", "--tracking-uri", store, "--out", str(tmp_path)]) == 2
    assert "compare needs two" in capsys.readouterr().err


def test_a_study_named_twice_is_refused(tmp_path: Path) -> None:
    """Its arms counted twice, in the table and in Holm's adjustment (p 0.070 became 0.141)."""
    with pytest.raises(TooFewArms, match="'fp' is named twice"):
        compare(f"sqlite:///{tmp_path / 'm.db'}", ["fp", "base", "fp"], tmp_path / "out")
