"""The memorisation figure: noisy-label vs clean training examples, drawn only for studies that log them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis import names, plots
from analysis.report import analyze

STEPS = (0, 10, 20, 30, 40)


def store(uri: str, *, noisy: bool) -> None:
    """Two penalty kinds × 2 seeds; with ``noisy``, the label-noise curves as a trial logs them."""
    client = MlflowClient(uri)
    exp = client.create_experiment("memo")
    parent = client.create_run(exp, tags={"fishtune.role": "study", "fishtune.searched": "penalty.kind,train.seed"})
    client.log_param(parent.info.run_id, "fisher.epsilon", "0.5")
    for i, (kind, seed) in enumerate((k, s) for k in ("none", "fisher") for s in (0, 1)):
        run = client.create_run(
            exp,
            tags={
                "fishtune.role": "trial",
                "fishtune.trial_id": f"m{i}",
                "fishtune.outcome": "completed",
                "mlflow.parentRunId": parent.info.run_id,
            },
        )
        metrics = [Metric(names.FISHER_TRACE, 10.0 + s + i, 0, s) for s in STEPS]
        metrics += [Metric(names.EPOCH, s / 10, 0, s) for s in STEPS]
        metrics += [Metric(names.TRAIN_LOSS, 1.0 if s < 20 else 0.3, 0, s) for s in STEPS[1:]]
        metrics += [Metric(names.VAL_ACCURACY, 0.8, 0, s) for s in (10, 20, 30, 40)]
        metrics += [Metric(names.FINAL_TEST_ACCURACY, 0.8 + 0.01 * i, 0, 40)]
        if noisy:
            memorised = 0.1 if kind == "fisher" else 0.6
            metrics += [Metric(names.TRAIN_ACCURACY_NOISY, memorised * s / 40, 0, s) for s in (10, 20, 30, 40)]
            metrics += [Metric(names.TRAIN_ACCURACY_CLEAN, 0.5 + s / 100, 0, s) for s in (10, 20, 30, 40)]
            for trace, stderr, scale in (
                (names.FISHER_TRACE_NOISY, names.FISHER_TRACE_NOISY_STDERR, 3.0),
                (names.FISHER_TRACE_CLEAN, names.FISHER_TRACE_CLEAN_STDERR, 1.0),
            ):
                metrics += [Metric(trace, scale * (10.0 + s), 0, s) for s in STEPS]
                metrics += [Metric(stderr, 0.5, 0, s) for s in STEPS]
        params = [Param("penalty.kind", kind), Param("train.seed", str(seed))]
        client.log_batch(run.info.run_id, metrics=metrics, params=params)


def test_the_figure_draws_both_groups_of_every_trial_per_configuration() -> None:
    table = pd.DataFrame({"penalty.kind": ["none", "fisher"], "outcome": [names.COMPLETED] * 2})
    epoch = pd.Series([0.0, 1.0, 2.0], index=[0, 10, 20])
    curves = {
        run: {
            names.EPOCH: epoch,
            names.TRAIN_ACCURACY_NOISY: pd.Series([0.1, 0.2], index=[10, 20]),
            names.TRAIN_ACCURACY_CLEAN: pd.Series([0.5, 0.7], index=[10, 20]),
            names.FISHER_TRACE_NOISY: pd.Series([5.0, 9.0, 7.0], index=[0, 10, 20]),
            names.FISHER_TRACE_NOISY_STDERR: pd.Series([1.0, 1.0, 1.0], index=[0, 10, 20]),
            names.FISHER_TRACE_CLEAN: pd.Series([2.0, 3.0, 2.5], index=[0, 10, 20]),
            names.FISHER_TRACE_CLEAN_STDERR: pd.Series([0.5, 0.5, 0.5], index=[0, 10, 20]),
        }
        for run in ("a", "b")
    }
    fig = plots.memorisation_curves(table, curves, ["a", "b"], ["penalty.kind"])
    accuracy, trace = fig.axes[:2]
    assert len(accuracy.lines) == 4 and len(trace.lines) == 4  # 2 trials × (noisy, clean)
    assert sorted(line.get_linestyle() for line in accuracy.lines) == ["-", "-", "--", "--"]
    assert {t.get_text() for t in accuracy.get_legend().get_texts()} == {
        "penalty.kind=none",
        "penalty.kind=fisher",
        "clean",
        "noisy",
    }
    assert len(trace.collections) == 4  # the ±stderr bands


@pytest.mark.filterwarnings("error:No data for colormapping")  # a study without lr searched: no colour, no warning
def test_analyze_draws_it_only_for_a_study_with_label_noise(tmp_path: Path) -> None:
    for noisy in (True, False):
        uri = f"sqlite:///{tmp_path / f'{noisy}.db'}"
        store(uri, noisy=noisy)
        out = tmp_path / f"out-{noisy}"
        analyze(uri, "memo", out)
        assert (out / "memorisation.png").is_file() is noisy
        assert ("memorisation.png" in (out / "report.md").read_text()) is noisy


def test_the_report_tables_final_train_accuracy_on_noisy_and_clean_examples_per_configuration(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path / 'noisy.db'}"
    store(uri, noisy=True)
    report = analyze(uri, "memo", tmp_path / "out")
    by_kind = {row["penalty.kind"]: row for row in report["aggregates"]}
    assert by_kind["none"]["final_train_accuracy_noisy_mean"] == 0.6  # the last epoch's point, not the max
    assert by_kind["fisher"]["final_train_accuracy_noisy_mean"] == 0.1
    assert by_kind["fisher"]["final_train_accuracy_clean_mean"] == 0.9
    assert abs(by_kind["none"]["final_test_accuracy_mean"] - 0.805) < 1e-12  # trials 0 and 1
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| penalty.kind | n | val accuracy | final test accuracy |" in text
    assert "| fisher | 2 | — | 0.825 ± 0.007 | — | 25 ± 0.707 | 47.5 ± 0.707 |" in text  # no val metric logged
    assert "0.100 ± 0.000 | 0.900 ± 0.000 |" in text


def test_without_label_noise_the_table_has_no_noisy_or_clean_column(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'clean.db'}"
    store(uri, noisy=False)
    report = analyze(uri, "memo", tmp_path / "out")
    assert all("final_train_accuracy_noisy_mean" not in row for row in report["aggregates"])
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| penalty.kind | n |" in text and "noisy labels" not in text
