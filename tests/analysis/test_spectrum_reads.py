"""λ_max read like Tr(F): the table's spectrum columns, the exploratory tests, the spectrum figure."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import names
from analysis.inference import inference
from analysis.mlflow_reader import StudyData
from analysis.report import build_report, write_report
from analysis.table import (
    EARLY_LAMBDA_MAX,
    LAMBDA_MAX_LR_PEAK,
    LAMBDA_MAX_PEAK,
    OUTLIER_SHARE_AT_PEAK,
    trials_table,
)

STEPS = np.arange(0, 121, 4)  # 20 steps per epoch, 6 epochs
SHARE = 0.4  # λ_max / Tr(F) in every synthetic run


def curves(i: int, spectrum: bool) -> dict[str, pd.Series]:
    t = STEPS / 20
    fisher = 10 + (90 - 8 * i) * np.exp(-((t - 2.0 - 0.1 * i) ** 2))  # a bump whose height falls with i
    lr = 0.01 * (1 + i)
    out = {
        names.EPOCH: pd.Series(t, index=STEPS),
        names.FISHER_TRACE: pd.Series(fisher, index=STEPS),
        names.FISHER_TRACE_STDERR: pd.Series(0.05 * fisher, index=STEPS),
        names.TRAIN_LOSS: pd.Series(np.where(t >= 1.5 + 0.1 * i, 0.3, 1.5), index=STEPS),
        names.TRAIN_EXAMPLES: pd.Series(32.0, index=STEPS),
        names.VAL_ACCURACY: pd.Series([0.5 + 0.01 * i] * 6, index=STEPS[5::5]),
    }
    if spectrum:
        out[names.FISHER_LAMBDA_MAX] = SHARE * out[names.FISHER_TRACE]
        out[names.FISHER_LAMBDA_MAX_LR] = lr * out[names.FISHER_LAMBDA_MAX]
    return out


def study(spectrum: bool, n: int = 6) -> StudyData:
    rows = [
        {
            "run_id": f"r{i}",
            "trial_id": f"t{i}",
            "outcome": "completed",
            "params.train.lr": str(0.01 * (1 + i)),
            "params.train.seed": "0",
            "metrics.final_test_accuracy": 0.95 - 0.01 * i,
            "metrics.best_test_accuracy": 0.96 - 0.01 * i,
            "metrics.final_val_accuracy": 0.94 - 0.01 * i,
        }
        for i in range(n)
    ]
    runs = pd.DataFrame(rows)
    params = {"train.momentum": "0.9", "fisher.epsilon": "0.6"}
    return StudyData("s", "p", params, ["train.lr"], runs, {f"r{i}": curves(i, spectrum) for i in range(n)})


def test_lambda_max_is_read_with_the_same_smoothing_and_crossing_as_tr_f() -> None:
    table = trials_table(study(spectrum=True), epsilon=0.6, epoch_k=1.0)
    assert table[LAMBDA_MAX_PEAK].to_numpy() == pytest.approx(SHARE * table[names.FISHER_PEAK].to_numpy(), rel=1e-12)
    assert table[EARLY_LAMBDA_MAX].to_numpy() == pytest.approx(
        SHARE * table[names.EARLY_FISHER_TRACE].to_numpy(), rel=1e-12
    )
    assert table[OUTLIER_SHARE_AT_PEAK].to_numpy() == pytest.approx(SHARE, rel=1e-12)
    lrs = 0.01 * (1 + np.arange(6))
    assert table[LAMBDA_MAX_LR_PEAK].to_numpy() == pytest.approx(lrs * table[LAMBDA_MAX_PEAK].to_numpy(), rel=1e-12)
    assert table["val_accuracy_at_lambda_peak"].notna().all()


def test_without_the_spectrum_there_are_no_spectrum_columns_or_tests() -> None:
    table = trials_table(study(spectrum=False), epsilon=0.6, epoch_k=1.0)
    assert LAMBDA_MAX_PEAK not in table
    out = inference(table, table.groupby("configuration").size())
    assert set(out["correlations"]) == {names.EARLY_FISHER_TRACE, names.FISHER_PEAK}


def test_spectrum_measures_join_the_exploratory_family_not_the_primary() -> None:
    table = trials_table(study(spectrum=True), epsilon=0.6, epoch_k=1.0)
    out = inference(table, table.groupby("configuration").size())
    assert set(out["correlations"]) == {names.EARLY_FISHER_TRACE, names.FISHER_PEAK, EARLY_LAMBDA_MAX, LAMBDA_MAX_PEAK}
    assert out["primary"]["measure"] == names.EARLY_FISHER_TRACE
    family = {t["name"] for t in out["family"]}
    assert f"correlations.{LAMBDA_MAX_PEAK}.spearman" in family
    rho = out["correlations"][LAMBDA_MAX_PEAK]["spearman"]["r"]
    assert rho == pytest.approx(1.0)  # a higher λ_max peak goes with higher accuracy in this synthetic study
    assert math.isfinite(out["correlations"][EARLY_LAMBDA_MAX]["spearman"]["r"])


def test_the_report_draws_the_spectrum_figure(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = study(spectrum=True)
    table = trials_table(data, epsilon=0.6, epoch_k=1.0)
    files = write_report(data, table, build_report(data, table, 0.6), tmp_path)
    assert tmp_path / "fisher_spectrum.png" in files
    assert (tmp_path / "fisher_spectrum.png").stat().st_size > 10_000
