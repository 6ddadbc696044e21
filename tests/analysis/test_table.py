"""The trials table's reads and the validation-accuracy control beside them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import names
from analysis.mlflow_reader import StudyData
from analysis.table import trials_table

STEPS = np.arange(0, 121, 4)  # 20 steps per epoch, 6 epochs


def one_run(val: dict[int, float]) -> StudyData:
    """A Tr(F) bump symmetric about epoch 2.0 (so the peak's box is centred there), the train loss
    below ε = 0.6 from epoch 1.5 on, and the validation accuracy ``val`` (step → value)."""
    t = STEPS / 20
    curves = {
        names.EPOCH: pd.Series(t, index=STEPS),
        names.FISHER_TRACE: pd.Series(10 + 90 * np.exp(-((t - 2.0) ** 2)), index=STEPS),
        names.TRAIN_LOSS: pd.Series(np.where(t > 1.5, 0.3, 1.5), index=STEPS),
        names.TRAIN_EXAMPLES: pd.Series(32.0, index=STEPS),
        names.VAL_ACCURACY: pd.Series(val),
    }
    runs = pd.DataFrame([{"run_id": "r", "trial_id": "t", "outcome": "completed", "params.train.lr": "0.01"}])
    return StudyData("s", "p", {}, ["train.lr"], runs, {"r": curves})


def test_the_validation_control_is_read_once_the_whole_box_behind_the_read_was_logged() -> None:
    """The peak's box spans epochs 1.5–2.5: the control is the epoch-3 accuracy, not epoch 2's,
    which would let Tr(F) see half an epoch more of the run than the accuracy it is tested against."""
    val = {20 * k: 0.5 + 0.1 * k for k in range(1, 7)}  # epoch k ends at step 20k
    row = trials_table(one_run(val), epsilon=0.6, epoch_k=1.0).iloc[0]
    assert row[names.FISHER_PEAK + "_epoch"] == pytest.approx(2.0)
    assert row["val_epoch_at_peak"] == 3.0 and row["val_accuracy_at_peak"] == pytest.approx(0.8)
    # the early read's box ends at its centre + 0.5 too, and the control follows it
    early_end = row[names.EARLY_FISHER_TRACE + "_epoch"] + 0.5
    assert row["val_epoch_at_early"] == np.ceil(early_end - 1e-9)


def test_no_control_when_no_epoch_end_follows_the_box() -> None:
    row = trials_table(one_run({20: 0.6, 40: 0.7}), epsilon=0.6, epoch_k=1.0).iloc[0]
    assert np.isnan(row["val_accuracy_at_peak"]) and np.isnan(row["val_epoch_at_peak"])
