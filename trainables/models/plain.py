"""The paper's SimpleCNN and a small MLP, with PyTorch's default init."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from trainables.models.common import image_shape
from trainables.schema import require

MIN_PAPER_PX = 16  # the paper layout's two valid convs and two pools need this much


@dataclass(frozen=True, kw_only=True, slots=True)
class SimpleCNNOptions:
    """The paper's SimpleCNN (Keras cifar10_cnn without dropout, Dense512 → Dense128).

    ``padding: paper`` keeps the Keras layout (same, valid, pool, same, valid, pool), which needs
    inputs of at least 16 px; ``same`` pads every conv, for small images such as digits. The
    default ``auto`` is ``paper`` from 16 px up (CIFAR's 32 px: the paper's network) and ``same``
    below, so the default model takes the default data set (digits, 8 px).
    """

    padding: Literal["auto", "paper", "same"] = "auto"
    width: int = 32  # channels of the first block; the second block has 2×width
    hidden: int = 128

    def __post_init__(self) -> None:
        require(self.width >= 1, "model.width", "an integer ≥ 1", self.width)
        require(self.hidden >= 1, "model.hidden", "an integer ≥ 1", self.hidden)


def simple_cnn(opts: SimpleCNNOptions, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels, height, width = image_shape("simple_cnn", input_shape)
    w = opts.width
    second = 1 if resolved_padding(opts.padding, height, width) == "same" else 0

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=second),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]

    features = nn.Sequential(*block(channels, w), *block(w, 2 * w), nn.Flatten())
    with torch.no_grad():
        flat = features(torch.zeros(1, channels, height, width)).shape[1]
    return nn.Sequential(features, nn.Linear(flat, opts.hidden), nn.ReLU(), nn.Linear(opts.hidden, num_classes))


def resolved_padding(padding: str, height: int, width: int) -> str:
    """``auto`` as ``paper`` or ``same`` for an input of ``height`` × ``width`` px."""
    if padding != "auto":
        return padding
    return "paper" if min(height, width) >= MIN_PAPER_PX else "same"


@dataclass(frozen=True, kw_only=True, slots=True)
class MLPOptions:
    hidden: int = 128
    depth: int = 2  # hidden layers

    def __post_init__(self) -> None:
        require(self.hidden >= 1, "model.hidden", "an integer ≥ 1", self.hidden)
        require(self.depth >= 1, "model.depth", "an integer ≥ 1", self.depth)


def mlp(opts: MLPOptions, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(torch.tensor(input_shape).prod())
    for _ in range(opts.depth):
        layers += [nn.Linear(width, opts.hidden), nn.ReLU()]
        width = opts.hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
