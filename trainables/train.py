"""The Ray Tune function trainable: a thin adapter from the training loop to ``tune.report``.

The only module of ``trainables`` that imports Ray. One ``tune.report`` per epoch, after
evaluation, with a checkpoint (design.md §4); the searched objective is in every report.

Retries. An exception raised by the trial's own code (a bug, a bad config, data that cannot be
loaded) is deterministic: retrying it from the checkpoint would fail again. The trial therefore
ends with a last report of outcome ``failed`` carrying its traceback, and Ray does not retry
it. Only transient errors (:data:`TRANSIENT_ERRORS`) propagate to Ray, which retries them from
the last checkpoint like a lost worker or node, within ``FailureConfig.max_failures``;
preempted nodes do not count against that budget (Ray's own rule).
"""

from __future__ import annotations

import os
import tempfile
import traceback
from typing import Any

import ray
import torch
from ray import tune

from trainables import report
from trainables.allocator import keep_freed_memory
from trainables.config import TrialConfig
from trainables.loop import train
from trainables.report import Placement

STATE_FILE = "state.pt"
# I/O on shared storage and a GPU shared with other trials can fail once and work on retry.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OSError, torch.cuda.OutOfMemoryError)


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


def device_name(device: torch.device) -> str:
    """``cpu`` or ``cuda:N``, as the ``fishtune.device`` tag says it."""
    return "cpu" if device.type == "cpu" else f"{device.type}:{device.index or 0}"


def node_id() -> str:
    """The Ray node this trial runs on (several nodes can share one IP address)."""
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def _set_threads() -> None:
    """Match torch's intra-op threads to the CPUs Ray gave this trial (at least one)."""
    resources = tune.get_context().get_trial_resources()
    cpus = sum(bundle.get("CPU", 0) for bundle in resources.bundles) if resources else 1
    torch.set_num_threads(max(1, int(cpus)))


def placement(device: str, note: str) -> Placement:
    """Where the trial ran, in every report: its device (and why, if not the assigned one) and node."""
    return Placement(device=device, device_note=note, node_id=node_id())


def load_state(directory: str, device: torch.device) -> dict[str, Any]:
    """A trial's checkpoint: tensors and plain containers only (``weights_only``), so a tampered
    checkpoint on shared storage cannot run code in the trial."""
    state: dict[str, Any] = torch.load(os.path.join(directory, STATE_FILE), map_location=device, weights_only=True)
    return state


def failed_result(error: BaseException, last: dict[str, Any] | None, device: str, note: str) -> dict[str, Any]:
    """The last report of a trial whose code raised: its traceback, at the step of its last report."""
    text = "".join(traceback.format_exception(error)).strip()
    previous = last or {}
    return report.failed_result(
        text, previous.get(report.EPOCH, 0), previous.get(report.STEP, 0), placement(device, note)
    )


def fishtune_trainable(config: dict[str, Any]) -> None:
    keep_freed_memory()  # the trial owns its worker process
    device, note = trial_device()
    last: dict[str, Any] | None = None
    try:
        cfg = TrialConfig.from_tune(config)
        _set_threads()
        state = None
        if (checkpoint := tune.get_checkpoint()) is not None:
            with checkpoint.as_directory() as d:
                state = load_state(d, device)
        if state:
            last = {report.EPOCH: state["epoch"], report.STEP: state["step"]}
        for epoch_report in train(cfg, device, state):
            last = epoch_report.to_result(placement(device_name(device), note))
            if not epoch_report.state:
                tune.report(last)
                continue
            with tempfile.TemporaryDirectory() as d:
                torch.save(epoch_report.state, os.path.join(d, STATE_FILE))
                tune.report(last, checkpoint=tune.Checkpoint.from_directory(d))
    except TRANSIENT_ERRORS:
        raise
    except Exception as error:  # deterministic (also a bad config or checkpoint): recorded, not retried
        tune.report(failed_result(error, last, device_name(device), note))
