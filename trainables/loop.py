"""The training loop of one trial, as a generator of per-epoch reports (no Ray here).

``train(cfg, device, state)`` yields one :class:`EpochReport` after each epoch's evaluation:
the epoch's metrics, the step-level curves logged since the previous report, and the state
to checkpoint. Passing a report's ``state`` back resumes exactly after that epoch: no step at
or before it is logged again.

Divergence (design.md §4): a non-finite loss or parameter stops the trial at once
(``nonfinite``); a train accuracy (over the epoch) ≤ 1.5/C at the end of an epoch after epoch
``train.collapse_after_epoch`` (default 3) is a network that collapsed without NaN
(``collapse``). Very small learning rates can sit at chance for longer than 3 epochs before
they start to learn; studies of them raise that epoch. The last report of a diverged trial carries the last
finite objective.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables import data as datasets
from trainables.config import LogSchedule, TrialConfig
from trainables.early import Curve, early_fisher_trace, fisher_peak
from trainables.fisher import eval_mode, fisher_trace
from trainables.models import build_model
from trainables.penalties import make_penalty

Outcome = Literal["running", "completed", "diverged"]


@dataclass(slots=True)
class EpochReport:
    epoch: int  # epochs completed
    step: int  # optimizer steps taken
    metrics: dict[str, float]
    curves: dict[str, Curve]  # step-level points logged since the previous report
    outcome: Outcome
    diverged_reason: str | None = None
    summary: dict[str, float] = field(default_factory=dict)  # only on the last report
    state: dict[str, Any] = field(default_factory=dict)


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator whose seed is derived from integers (e.g. train.seed, step)."""
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def probe_indices(cfg: TrialConfig, n_train: int) -> torch.Tensor:
    """The fixed Tr(F) probe: ``fisher.samples`` training-split indices drawn once from ``data.seed``."""
    return torch.randperm(n_train, generator=seeded_generator(cfg.data.seed))[: cfg.fisher.samples]


class _Window:
    """Train statistics accumulated since the previous logged step, weighted by examples.

    Example weights, so that an epoch's short last batch (14 examples on digits) counts for its
    share and not as much as a full batch; ``train_examples`` is logged so that the analysis can
    pool windows exactly when it smooths the loss.
    """

    def __init__(self) -> None:
        self.loss = self.penalty = 0.0
        self.correct = self.examples = 0

    def add(self, loss: float, penalty: float, correct: int, examples: int) -> None:
        self.loss += loss * examples
        self.penalty += penalty * examples
        self.correct += correct
        self.examples += examples

    def means(self) -> dict[str, float]:
        return {
            "train_loss": self.loss / self.examples,
            "penalty_loss": self.penalty / self.examples,
            "train_accuracy": self.correct / self.examples,
            "train_examples": float(self.examples),
        }


def train(cfg: TrialConfig, device: torch.device, state: dict[str, Any] | None = None) -> Iterator[EpochReport]:
    torch.manual_seed(cfg.train.seed)
    splits = cfg.data.load(device)
    info = datasets.dataset_info(cfg.data.name)
    model = build_model(cfg.model.name, cfg.model.options, info.input_shape, info.num_classes).to(device)
    penalty = make_penalty(cfg.penalty.kind, cfg.penalty.coef, cfg.penalty.every).to(device)
    penalty.prepare(model, splits.train_x[: cfg.train.batch_size])
    optimizer = torch.optim.SGD(
        [*model.parameters(), *penalty.parameters()],
        lr=cfg.train.lr,
        momentum=cfg.train.momentum,
        weight_decay=cfg.train.weight_decay,
    )
    n_train = len(splits.train_y)
    steps_per_epoch = math.ceil(n_train / cfg.train.batch_size)
    probe = probe_indices(cfg, n_train)
    # Un-augmented even with data.augment: Tr(F) is an expectation over the training set
    # (paper Eq. 1), and a fixed probe keeps the curve comparable with and without augmentation.
    probe_x, probe_y = splits.train_x[probe], splits.train_y[probe]

    schedule = LogSchedule.resolve(
        cfg.fisher.schedule,
        steps_per_epoch,
        cfg.train.epochs,
        cfg.fisher.point_cost(info.num_classes, cfg.train.batch_size),
    )

    def measure(step: int) -> dict[str, float]:
        est = fisher_trace(
            model,
            probe_x,
            labels=cfg.fisher.trace_labels,
            generator=seeded_generator(cfg.train.seed, step),
            label_samples=cfg.fisher.draws,
            per_layer=cfg.fisher.per_layer,
        )
        out = {"fisher_trace": est.mean, "fisher_trace_stderr": est.stderr}
        out.update({f"fisher_trace.layer.{path}": v for path, v in est.per_layer.items()})
        if cfg.fisher.labels == "empirical":
            out["fisher_trace_empirical"] = fisher_trace(model, probe_x, probe_y).mean
        return out

    step, start_epoch = 0, 0
    history: dict[str, Curve] = {"train_loss": [], "fisher_trace": [], "epoch": []}
    best_test, last_objective = -math.inf, None
    curves: dict[str, Curve] = {}

    def log(point_step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            curves.setdefault(name, []).append((point_step, float(value)))
            if name in history:
                history[name].append((point_step, float(value)))

    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        penalty.load_state_dict(state["penalty"])
        torch.set_rng_state(state["torch_rng"].cpu())  # the checkpoint may have been mapped to a GPU
        step, start_epoch, best_test = state["step"], state["epoch"], state["best_test"]
        history, last_objective = state["history"], state["last_objective"]
    else:
        log(0, {"epoch": 0.0, **measure(0)})
        last_objective = evaluate(model, splits.val_x, splits.val_y)

    window = _Window()
    for epoch in range(start_epoch, cfg.train.epochs):
        model.train()
        order = torch.randperm(n_train, generator=seeded_generator(cfg.train.seed, epoch, 1)).to(device)
        reason: str | None = None
        epoch_correct = 0
        for batch in order.split(cfg.train.batch_size):
            x, y = splits.train_x[batch], splits.train_y[batch]
            if cfg.data.augment:  # training batches only: CE and penalty see the same augmented batch
                x = datasets.augment(x, seeded_generator(cfg.train.seed, step, 3))
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            pen = penalty(model, x, y, logits, seeded_generator(cfg.train.seed, step, 2))
            if penalty.recomputed and penalty.batch_trace is not None:  # at θ after `step` steps
                log(step, {"fisher_trace_batch": penalty.batch_trace})
            optimizer.zero_grad(set_to_none=True)
            (loss + pen).backward()
            optimizer.step()
            step += 1
            if not (math.isfinite(loss.item()) and math.isfinite(pen.item())):
                reason = "nonfinite"
                break
            correct = int((logits.argmax(1) == y).sum())
            epoch_correct += correct
            window.add(loss.item(), pen.item(), correct, len(y))
            if schedule.is_logged(step):
                if not _finite_model(model, probe_x):
                    reason = "nonfinite"
                    break
                log(step, {"epoch": step / steps_per_epoch, **window.means(), **measure(step)})
                window = _Window()

        epoch_metrics = _epoch_metrics(model, splits) if reason is None else {}
        if reason is None and not all(math.isfinite(v) for v in epoch_metrics.values()):
            reason = "nonfinite"  # e.g. logits so large that the evaluation loss overflows
        if reason is None:
            best_test = max(best_test, epoch_metrics["test_accuracy"])
            train_acc = epoch_correct / n_train  # over the whole epoch: steadier than the last window
            if epoch + 1 > cfg.train.collapse_after_epoch and train_acc <= 1.5 / info.num_classes:
                reason = "collapse"
        if reason is not None:
            yield _diverged_report(epoch, step, reason, last_objective, curves, history, best_test, cfg)
            return
        last_objective = epoch_metrics
        done = epoch + 1 == cfg.train.epochs
        report = EpochReport(
            epoch=epoch + 1,
            step=step,
            metrics=epoch_metrics,
            curves=curves,
            outcome="completed" if done else "running",
            summary=_summary(history, epoch_metrics, best_test, cfg) if done else {},
            state=copy.deepcopy(  # a snapshot: state_dict() tensors are the live parameters
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "penalty": penalty.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "step": step,
                    "epoch": epoch + 1,
                    "best_test": best_test,
                    "history": history,
                    "last_objective": last_objective,
                }
            ),
        )
        curves = {}
        yield report


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` (eval mode) on a whole split."""
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=False):
        logits = model(xb)
        loss += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += int((logits.argmax(1) == yb).sum())
    model.train(was_training)
    return {"loss": loss / len(y), "accuracy": correct / len(y)}


def _epoch_metrics(model: nn.Module, splits: datasets.Splits) -> dict[str, float]:
    val = evaluate(model, splits.val_x, splits.val_y)
    test = evaluate(model, splits.test_x, splits.test_y)
    return {
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
    }


def _finite_model(model: nn.Module, probe: torch.Tensor) -> bool:
    """Finite parameters and finite logits on the probe (finite weights can still overflow)."""
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return False
    with torch.no_grad(), eval_mode(model):
        return bool(torch.isfinite(model(probe)).all())


def _summary(history: dict[str, Curve], last: dict[str, float], best_test: float, cfg: TrialConfig) -> dict[str, float]:
    out: dict[str, float] = {}
    if "test_accuracy" in last:
        out["final_test_accuracy"] = last["test_accuracy"]
        out["final_val_accuracy"] = last["val_accuracy"]
    if math.isfinite(best_test):
        out["best_test_accuracy"] = best_test
    early = early_fisher_trace(history["train_loss"], history["fisher_trace"], cfg.epsilon)
    if early is not None:
        out["early_fisher_trace"] = early[0]
    peak = fisher_peak(history["fisher_trace"], history["epoch"])
    if peak is not None:
        out["fisher_peak"], out["fisher_peak_step"] = peak[0], float(peak[1])
    return out


def _diverged_report(
    epoch: int,
    step: int,
    reason: str,
    last_objective: dict[str, float] | None,
    curves: dict[str, Curve],
    history: dict[str, Curve],
    best_test: float,
    cfg: TrialConfig,
) -> EpochReport:
    """The final report of a diverged trial: the last finite objective, no checkpoint."""
    last = dict(last_objective or {})
    if "loss" in last:  # the evaluation before the first epoch
        last = {"val_loss": last["loss"], "val_accuracy": last["accuracy"]}
    return EpochReport(
        epoch=epoch,
        step=step,
        metrics=last,
        curves=curves,
        outcome="diverged",
        diverged_reason=reason,
        summary=_summary(history, {}, best_test, cfg),
    )
