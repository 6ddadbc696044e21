"""The analysis's copy of the report names agrees with the trainable's (analysis imports no trainables)."""

from __future__ import annotations

from analysis import mlflow_reader, names
from trainables import report
from trainables.report import Outcome


def test_every_name_the_analysis_reads_is_the_one_the_trainable_reports() -> None:
    copied = {k: v for k, v in vars(names).items() if k.isupper()}
    assert copied, "analysis.names defines no names"
    for key, value in copied.items():
        if key in Outcome.__members__:
            assert Outcome[key].value == value, key
        else:
            assert getattr(report, key) == value, key


def test_the_curves_read_are_step_metrics_the_driver_stores() -> None:
    assert set(mlflow_reader.CURVES) <= set(report.CURVE_METRICS) | set(report.EPOCH_METRICS)
    assert set(report.step_metrics(mlflow_reader.CURVES)) == set(mlflow_reader.CURVES)
