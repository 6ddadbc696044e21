"""The Ray Tune function trainable: a thin adapter from the training loop to ``tune.report``.

The only module of ``trainables`` that imports Ray. One ``tune.report`` per epoch, after
evaluation, with a checkpoint (design.md §4); the searched objective is in every report.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import ray
import torch
from ray import tune

from trainables.config import TrialConfig
from trainables.loop import EpochReport, train

STATE_FILE = "state.pt"


def trial_device() -> tuple[torch.device, str]:
    """The device this trial runs on, and a note when it is not the one Ray assigned.

    A trial given a (logical) GPU that torch cannot see runs on CPU and says so.
    """
    gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
    if gpu_ids and torch.cuda.is_available():
        return torch.device("cuda", 0), ""
    if gpu_ids:
        return torch.device("cpu"), f"Ray assigned GPU {gpu_ids[0]} but torch sees no CUDA device: ran on CPU"
    return torch.device("cpu"), ""


def _set_threads() -> None:
    """Match torch's intra-op threads to the CPUs Ray gave this trial (at least one)."""
    resources = tune.get_context().get_trial_resources()
    cpus = sum(bundle.get("CPU", 0) for bundle in resources.bundles) if resources else 1
    torch.set_num_threads(max(1, int(cpus)))


def to_result(report: EpochReport, device: torch.device, note: str) -> dict[str, Any]:
    """The dict given to ``tune.report``; the driver's tracking callback reads these keys."""
    return {
        **report.metrics,
        "epoch": report.epoch,
        "step": report.step,
        "fishtune_outcome": report.outcome,
        "fishtune_diverged_reason": report.diverged_reason or "",
        "fishtune_device": "cpu" if device.type == "cpu" else f"{device.type}:{device.index or 0}",
        "fishtune_device_note": note,
        "curves": report.curves,
        "summary": report.summary,
    }


def fishtune_trainable(config: dict[str, Any]) -> None:
    cfg = TrialConfig.from_tune(config)
    _set_threads()
    device, note = trial_device()
    state = None
    if (checkpoint := tune.get_checkpoint()) is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location=device, weights_only=True)
    for report in train(cfg, device, state):
        result = to_result(report, device, note)
        if not report.state:
            tune.report(result)
            continue
        with tempfile.TemporaryDirectory() as d:
            torch.save(report.state, os.path.join(d, STATE_FILE))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))
