"""Model registry keyed by the spec's ``model.name``; each entry has a typed options class.

Models are written in plain torch (no torchvision: there is no CPU build of it here). In-place
operations are avoided so hook-based per-example gradient norms stay exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from trainables.schema import ConfigError, require


@dataclass(frozen=True, kw_only=True, slots=True)
class SimpleCNNOptions:
    """The paper's SimpleCNN (Keras cifar10_cnn without dropout, Dense512 → Dense128).

    ``padding: paper`` keeps the Keras layout (same, valid, pool, same, valid, pool), which needs
    inputs of at least 16 px; ``same`` pads every conv, for small images such as digits.
    """

    padding: Literal["paper", "same"] = "paper"
    width: int = 32  # channels of the first block; the second block has 2×width
    hidden: int = 128

    def __post_init__(self) -> None:
        require(self.width >= 1, "model.width", "an integer ≥ 1", self.width)
        require(self.hidden >= 1, "model.hidden", "an integer ≥ 1", self.hidden)


@dataclass(frozen=True, kw_only=True, slots=True)
class MLPOptions:
    hidden: int = 128
    depth: int = 2  # hidden layers

    def __post_init__(self) -> None:
        require(self.hidden >= 1, "model.hidden", "an integer ≥ 1", self.hidden)
        require(self.depth >= 1, "model.depth", "an integer ≥ 1", self.depth)


@dataclass(frozen=True, kw_only=True, slots=True)
class ResNetOptions:
    """CIFAR-style ResNet (He et al. 2016, §4.2): depth = 6n + 2, BatchNorm, widths 16/32/64."""

    depth: int = 56
    width: int = 16

    def __post_init__(self) -> None:
        require(
            self.depth >= 8 and (self.depth - 2) % 6 == 0, "model.depth", "6n + 2 with n ≥ 1 (e.g. 20, 56)", self.depth
        )
        require(self.width >= 1, "model.width", "an integer ≥ 1", self.width)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()  # modules, so activation hooks (VCL) see them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet(opts: ResNetOptions, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    n = (opts.depth - 2) // 6
    widths = [opts.width, 2 * opts.width, 4 * opts.width]
    layers: list[nn.Module] = [
        nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(),
    ]
    c_in = widths[0]
    for stage, width in enumerate(widths):
        for block in range(n):
            layers.append(BasicBlock(c_in, width, 2 if stage > 0 and block == 0 else 1))
            c_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


def simple_cnn(opts: SimpleCNNOptions, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels, height, width = input_shape
    w = opts.width
    second = 1 if opts.padding == "same" else 0

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


def mlp(opts: MLPOptions, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(torch.tensor(input_shape).prod())
    for _ in range(opts.depth):
        layers += [nn.Linear(width, opts.hidden), nn.ReLU()]
        width = opts.hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@dataclass(frozen=True, slots=True)
class ModelEntry:
    build: Callable[[Any, tuple[int, ...], int], nn.Module]
    options: type


MODELS: dict[str, ModelEntry] = {
    "simple_cnn": ModelEntry(simple_cnn, SimpleCNNOptions),
    "mlp": ModelEntry(mlp, MLPOptions),
    "resnet56": ModelEntry(resnet, ResNetOptions),
}


def model_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"model.name: unknown model {name!r}; choose one of {sorted(MODELS)}") from None


def build_model(name: str, options: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build model ``name``; a shape mismatch with the data set is a :class:`ConfigError`."""
    entry = model_entry(name)
    try:
        model = entry.build(options, input_shape, num_classes)
        with torch.no_grad():
            model.eval()(torch.zeros(2, *input_shape))
    except RuntimeError as exc:
        hint = " (simple_cnn needs ≥ 16 px unless model.padding is 'same')" if name == "simple_cnn" else ""
        raise ConfigError(f"model: {name} cannot take inputs of shape {tuple(input_shape)}{hint}: {exc}") from None
    return model.train()
