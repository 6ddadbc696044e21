"""Evaluation of a model on whole splits, and the finiteness check of divergence."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables import data as datasets
from trainables import report as names
from trainables.fisher import eval_mode


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


def epoch_metrics(model: nn.Module, splits: datasets.Splits) -> dict[str, float]:
    """Validation and test loss and accuracy; with label noise, the training accuracy on the
    noisy and on the clean training examples (against the labels trained on)."""
    val = evaluate(model, splits.val_x, splits.val_y)
    test = evaluate(model, splits.test_x, splits.test_y)
    metrics = {
        names.VAL_LOSS: val["loss"],
        names.VAL_ACCURACY: val["accuracy"],
        names.TEST_LOSS: test["loss"],
        names.TEST_ACCURACY: test["accuracy"],
    }
    if len(splits.noisy_indices):
        noisy = torch.zeros(len(splits.train_y), dtype=torch.bool, device=splits.train_y.device)
        noisy[splits.noisy_indices.to(noisy.device)] = True
        for name, subset in ((names.TRAIN_ACCURACY_NOISY, noisy), (names.TRAIN_ACCURACY_CLEAN, ~noisy)):
            if subset.any():
                metrics[name] = evaluate(model, splits.train_x[subset], splits.train_y[subset])["accuracy"]
    return metrics


def finite_model(model: nn.Module, probe: torch.Tensor) -> bool:
    """Finite parameters and finite logits on the probe (finite weights can still overflow)."""
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return False
    with torch.no_grad(), eval_mode(model):
        return bool(torch.isfinite(model(probe)).all())
