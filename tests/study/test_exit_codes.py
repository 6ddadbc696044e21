"""The exit policy of a launch: interrupted > MLflow data kept on disk > refused writes > failed trials."""

from __future__ import annotations

import pytest

from study.exit_codes import FAILED, INTERRUPTED, OK, LaunchEnd, launch_outcome


@pytest.mark.parametrize(
    ("end", "code", "says"),
    [
        (LaunchEnd(interrupted=False), OK, "study s finished"),
        (
            LaunchEnd(interrupted=True, unwritten=3, failed=1),
            INTERRUPTED,
            "Continue with: fishtune resume s; the MLflow",
        ),
        (LaunchEnd(interrupted=False, unwritten=3, refused=2, failed=1), FAILED, "did not take 3 write(s)"),
        (LaunchEnd(interrupted=False, refused=2, failed=1), FAILED, "MLflow refused 2 write(s)"),
        (LaunchEnd(interrupted=False, failed=1), FAILED, "1 trial(s) failed"),
    ],
)
def test_launch_outcome(end: LaunchEnd, code: int, says: str) -> None:
    outcome = launch_outcome("s", end, "http://mlflow:5000", "/st/runs/s/mlflow-unwritten.jsonl")
    assert outcome.code == code and says in outcome.message and "\n" not in outcome.message
    if end.unwritten:
        assert "/st/runs/s/mlflow-unwritten.jsonl" in outcome.message and "http://mlflow:5000" in outcome.message
