"""The Ray adapter's pieces that run without Ray: checkpoint loading and the failure report."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch

from trainables.train import STATE_FILE, failed_result, load_state


class Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.marker, "code ran"))


def test_checkpoints_load_tensors_and_refuse_code(tmp_path: Path) -> None:
    state = {"model": {"w": torch.ones(2)}, "step": 3, "history": {"train_loss": [(1, 0.5)]}}
    torch.save(state, tmp_path / STATE_FILE)
    loaded = load_state(str(tmp_path), torch.device("cpu"))
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.ones(2))

    marker = tmp_path / "pwned"
    torch.save({"model": Payload(marker)}, tmp_path / STATE_FILE)
    with pytest.raises(pickle.UnpicklingError):
        load_state(str(tmp_path), torch.device("cpu"))
    assert not marker.exists()


def test_failure_report_carries_the_traceback_and_a_placeholder_objective() -> None:
    try:
        raise ValueError("bad config value")
    except ValueError as error:
        result = failed_result(error, None, "cpu", "")
    assert result["fishtune_outcome"] == "failed"
    assert "Traceback" in result["fishtune_error"] and "ValueError: bad config value" in result["fishtune_error"]
    assert math.isnan(result["val_accuracy"]) and result["epoch"] == 0 and result["curves"] == {}
    last = {"val_accuracy": 0.8, "val_loss": 0.5, "epoch": 4, "step": 40}
    after = failed_result(ValueError("x"), last, "cpu", "")
    assert math.isnan(after["val_accuracy"]) and after["step"] == 40  # never a value the trial did not reach
