"""Models for 1-D signals (MNIST-1D): the reference convolutional network of its paper."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainables.models.common import signal_shape
from trainables.schema import require


@dataclass(frozen=True, kw_only=True, slots=True)
class CNN1DOptions:
    """MNIST-1D's ``ConvBase`` (Greydanus, 2020): three ``Conv1d(channels)`` of stride 2 and
    padding 1 (kernels 5, 3, 3), each followed by a ReLU, then one Linear on the flattened
    features (25 × 5 for the 40-sample signals); PyTorch's default init, as the reference."""

    channels: int = 25

    def __post_init__(self) -> None:
        require(self.channels >= 1, "model.channels", "an integer ≥ 1", self.channels)


def cnn1d(opts: CNN1DOptions, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels, length = signal_shape("cnn1d", input_shape)
    c = opts.channels
    features = nn.Sequential(
        nn.Conv1d(channels, c, 5, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(c, c, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(c, c, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
    )
    with torch.no_grad():
        flat = features(torch.zeros(1, channels, length)).shape[1]
    return nn.Sequential(features, nn.Linear(flat, num_classes))
